//! A type-keyed service container: the seed's `container.register(X, x)` /
//! `container.resolve(X)`.
//!
//! Services are stored as `Arc<T>` under `T`'s `TypeId`; resolving gives back the typed
//! `Arc<T>`, never a string-keyed `Any`. A [`Container`] is a cheap handle (an `Arc`
//! inside); [`Container::global`] is the process-wide one the seed's `container` import
//! refers to. HTTP handlers reach services with the [`Inject`] extractor.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;

/// A registry of shared services keyed by type.
#[derive(Clone, Default)]
pub struct Container {
    inner: Arc<RwLock<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.read().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Container").field("services", &n).finish()
    }
}

/// A service that was never registered.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "no service of type `{type_name}` is registered; call container.register(value) at startup"
)]
pub struct NotRegistered {
    /// The requested type.
    pub type_name: &'static str,
}

impl Container {
    /// An empty container.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide container.
    pub fn global() -> &'static Container {
        static GLOBAL: OnceLock<Container> = OnceLock::new();
        GLOBAL.get_or_init(Container::new)
    }

    /// Register `value` as the service of type `T`, replacing any previous one.
    ///
    /// ```
    /// let c = street::Container::new();
    /// c.register(42u32);
    /// assert_eq!(*c.resolve::<u32>().unwrap(), 42);
    /// assert!(c.resolve::<String>().is_err());
    /// ```
    pub fn register<T: Send + Sync + 'static>(&self, value: T) -> Arc<T> {
        let arc = Arc::new(value);
        self.register_arc(arc.clone());
        arc
    }

    /// Register an existing `Arc<T>`.
    pub fn register_arc<T: Send + Sync + 'static>(&self, value: Arc<T>) {
        let mut m = self.inner.write().unwrap_or_else(|p| p.into_inner());
        m.insert(TypeId::of::<T>(), value);
    }

    /// The service of type `T`.
    ///
    /// # Errors
    /// [`NotRegistered`] when no `T` was registered.
    pub fn resolve<T: Send + Sync + 'static>(&self) -> Result<Arc<T>, NotRegistered> {
        let m = self.inner.read().unwrap_or_else(|p| p.into_inner());
        m.get(&TypeId::of::<T>())
            .and_then(|a| a.clone().downcast::<T>().ok())
            .ok_or(NotRegistered {
                type_name: std::any::type_name::<T>(),
            })
    }

    /// Whether a `T` is registered.
    pub fn contains<T: Send + Sync + 'static>(&self) -> bool {
        let m = self.inner.read().unwrap_or_else(|p| p.into_inner());
        m.contains_key(&TypeId::of::<T>())
    }
}

/// The process-wide container (the seed's `container`).
pub fn container() -> &'static Container {
    Container::global()
}

/// Extractor: a service from the app's container (500 when it is missing).
///
/// ```no_run
/// use street::container::Inject;
/// use street::jwt::JwtService;
/// async fn login(Inject(jwt): Inject<JwtService>) -> String {
///     jwt.sign(&serde_json::json!({"sub": "u1"})).unwrap_or_default()
/// }
/// ```
#[derive(Debug)]
pub struct Inject<T>(pub Arc<T>);

impl<T, S> FromRequestParts<S> for Inject<T>
where
    T: Send + Sync + 'static,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let c = parts
            .extensions
            .get::<crate::app::AppContext>()
            .map(|ctx| ctx.container.clone())
            .unwrap_or_else(|| Container::global().clone());
        c.resolve::<T>().map(Inject).map_err(|e| {
            tracing::error!(error = %e, "service missing");
            (StatusCode::INTERNAL_SERVER_ERROR, "service unavailable").into_response()
        })
    }
}
