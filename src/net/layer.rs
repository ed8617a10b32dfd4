//! [`ClientAddrLayer`]: trusted proxies for an app served by its own server.

use std::net::SocketAddr;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use http::Request;

use super::TrustedProxies;

/// A tower layer that replaces each request's `ConnectInfo<SocketAddr>` (the TCP peer)
/// with the client a trusted proxy names (see [`TrustedProxies::client_addr`]). Made by
/// [`TrustedProxies::layer`]; for apps served by their own `axum::serve` (street's own
/// listener does this by itself with [`AppOptions::trusted_proxies`](crate::AppOptions)).
///
/// Put it outside every layer and handler that reads the address: WebSocket
/// per-address limits, SSE per-address caps, your logs. A request without
/// `ConnectInfo` passes unchanged.
#[derive(Debug, Clone)]
pub struct ClientAddrLayer {
    trusted: TrustedProxies,
}

/// The service of [`ClientAddrLayer`].
#[derive(Debug, Clone)]
pub struct ClientAddr<S> {
    inner: S,
    trusted: TrustedProxies,
}

impl TrustedProxies {
    /// This list as a tower layer for your own server (see [`ClientAddrLayer`]).
    ///
    /// Add it **last**, after your routes: an axum layer wraps only the routes added before
    /// it.
    ///
    /// ```
    /// use street::net::TrustedProxies;
    /// let wss = street::ws::WebSocketServer::new(Default::default());
    /// let proxies = TrustedProxies::parse(["10.0.0.0/8"]).expect("valid CIDRs");
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/ws", wss.route())
    ///     .layer(proxies.layer());
    /// ```
    pub fn layer(&self) -> ClientAddrLayer {
        ClientAddrLayer {
            trusted: self.clone(),
        }
    }
}

impl<S> tower::Layer<S> for ClientAddrLayer {
    type Service = ClientAddr<S>;

    fn layer(&self, inner: S) -> ClientAddr<S> {
        ClientAddr {
            inner,
            trusted: self.trusted.clone(),
        }
    }
}

impl<S, B> tower::Service<Request<B>> for ClientAddr<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if !self.trusted.is_empty() {
            let peer = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0);
            if let Some(peer) = peer {
                let client = self.trusted.client_addr(peer, req.headers());
                req.extensions_mut().insert(ConnectInfo(client));
            }
        }
        self.inner.call(req)
    }
}
