//! Handler traits: one `on()` that accepts plain closures and async closures.
//!
//! A handler is any `Fn(T)` returning `()` / `Result<(), E>` (run inline), or returning a
//! future of those (awaited before the socket's next message is handled). The marker type
//! parameter `M` lets both shapes share one method without overlapping impls; you never
//! name it.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

/// A boxed, sendable future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The result of one handler invocation, as a string error for the error hook.
pub(crate) type HandlerResult = Result<(), String>;

/// What a handler may return: `()` or `Result<T, E>` for any displayable `E` (the `Ok`
/// value is ignored; the error goes to the socket's `error` handlers).
pub trait Outcome: Send + 'static {
    /// Convert into the uniform result.
    fn into_result(self) -> Result<(), String>;
}

impl Outcome for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<T: Send + 'static, E: std::fmt::Display + Send + 'static> Outcome for Result<T, E> {
    fn into_result(self) -> Result<(), String> {
        self.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The two ways a handler call can finish.
pub(crate) enum Dispatch {
    /// Ran inline.
    Done(HandlerResult),
    /// Must be awaited.
    Pending(BoxFuture<HandlerResult>),
}

/// Marker for handlers that run inline.
#[derive(Debug)]
pub struct Inline<R>(PhantomData<R>);
/// Marker for handlers that return a future.
#[derive(Debug)]
pub struct Awaited<R>(PhantomData<R>);

/// A one-argument event handler. Implemented for `Fn(T) -> impl Outcome` and
/// `Fn(T) -> impl Future<Output = impl Outcome>`.
pub trait Handler<T, M>: Send + Sync + 'static {
    /// Invoke the handler.
    #[doc(hidden)]
    fn call(&self, arg: T) -> DispatchOut;
}

/// Opaque result of [`Handler::call`].
#[doc(hidden)]
pub struct DispatchOut(pub(crate) Dispatch);

impl<F, T, R> Handler<T, Inline<R>> for F
where
    F: Fn(T) -> R + Send + Sync + 'static,
    R: Outcome,
{
    fn call(&self, arg: T) -> DispatchOut {
        DispatchOut(Dispatch::Done(self(arg).into_result()))
    }
}

impl<F, T, Fut> Handler<T, Awaited<Fut::Output>> for F
where
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Outcome,
{
    fn call(&self, arg: T) -> DispatchOut {
        let fut = self(arg);
        DispatchOut(Dispatch::Pending(Box::pin(async move {
            fut.await.into_result()
        })))
    }
}

/// A two-argument handler: the connection handler `(Socket, ConnectRequest)`.
pub trait Handler2<A, B, M>: Send + Sync + 'static {
    /// Invoke the handler.
    #[doc(hidden)]
    fn call(&self, a: A, b: B) -> DispatchOut;
}

impl<F, A, B, R> Handler2<A, B, Inline<R>> for F
where
    F: Fn(A, B) -> R + Send + Sync + 'static,
    R: Outcome,
{
    fn call(&self, a: A, b: B) -> DispatchOut {
        DispatchOut(Dispatch::Done(self(a, b).into_result()))
    }
}

impl<F, A, B, Fut> Handler2<A, B, Awaited<Fut::Output>> for F
where
    F: Fn(A, B) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Outcome,
{
    fn call(&self, a: A, b: B) -> DispatchOut {
        let fut = self(a, b);
        DispatchOut(Dispatch::Pending(Box::pin(async move {
            fut.await.into_result()
        })))
    }
}

/// Run a dispatch to completion, turning a panic in user code into an error.
pub(crate) async fn run_dispatch(f: impl FnOnce() -> DispatchOut) -> HandlerResult {
    use futures_util::FutureExt;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Err(p) => Err(panic_message(&p)),
        Ok(DispatchOut(Dispatch::Done(r))) => r,
        Ok(DispatchOut(Dispatch::Pending(fut))) => {
            match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
                Ok(r) => r,
                Err(p) => Err(panic_message(&p)),
            }
        }
    }
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    format!("handler panicked: {msg}")
}
