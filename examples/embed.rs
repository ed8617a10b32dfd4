//! street inside a plain axum app: the host owns the `Router`, the layers
//! (tower-http's `TraceLayer` and CORS) and the server (`axum::serve`); street adds its
//! WebSocket servers as routes. Serves the bench contract (`shared/bench/contract.md`)
//! with the same endpoints and flags as `bench_server`:
//! - `/ws` (envelopes: `echo` back to the sender, `broadcast` to everyone) and `/echo`
//!   (raw, verbatim), plus `/ws/{room}` whose connection handler greets with the path
//!   parameter and the request id the host's middleware set;
//! - the host's own routes: `/` and `/health`;
//! - `--tls-cert`/`--tls-key` through [`TlsListener`] (SIGHUP reloads the files);
//! - `--trusted-proxy` through [`TrustedProxies::layer`](street::net::TrustedProxies::layer);
//!   `--proxy-protocol` needs street's own listener and is refused here (exit 2).
//!
//! SIGTERM: the graceful-shutdown future closes the WebSocket servers (1001 to every
//! client) before axum drains its HTTP connections.

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::extract::Request;
use axum::middleware::Next;
use axum::routing::get;
use axum::Router;
use street::tls::TlsListener;
use street::ws::{ConnectRequest, Socket, WebSocketServer};
use tower_http::cors::CorsLayer;
use tower_http::trace::TraceLayer;

mod support {
    pub(crate) mod contract;
}
use support::contract::{self, Flags};

fn main() -> ExitCode {
    contract::main(run)
}

/// What the host's middleware puts on every request (here: a request number).
#[derive(Clone, Debug)]
struct RequestId(u64);

async fn request_id(mut req: Request, next: Next) -> axum::response::Response {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    req.extensions_mut().insert(RequestId(id));
    next.run(req).await
}

async fn run(flags: Flags, app: street::AppOptions) -> ExitCode {
    if flags.proxy_protocol {
        eprintln!(
            "--proxy-protocol needs street's own listener (street::app, as bench_server); \
             a host server reads PROXY headers itself"
        );
        return ExitCode::from(2);
    }
    let (ws, echo) = contract::endpoints(&flags);
    contract::echo_and_broadcast(&ws);
    let rooms = WebSocketServer::new(contract::ws_options(&flags).with_path("/ws/{room}"));
    rooms.on_connection(|socket: Socket, req: ConnectRequest| {
        let room = req.path_param("room").unwrap_or_default().to_owned();
        let id = req.extensions().get::<RequestId>().map(|r| r.0);
        socket.emit(
            "welcome",
            &serde_json::json!({ "room": room, "request_id": id }),
        )
    });

    let router = Router::new()
        .route("/", get(|| async { "a plain axum app with street inside" }))
        .route("/health", get(|| async { "ok" }))
        .route("/ws", ws.route())
        .route("/echo", echo.route())
        .route("/ws/{room}", rooms.route())
        .layer(axum::middleware::from_fn(request_id))
        .layer(TraceLayer::new_for_http())
        .layer(CorsLayer::permissive())
        // outermost: every layer and handler inside sees the client a trusted proxy names
        .layer(app.trusted_proxies.layer());

    let listener = match tokio::net::TcpListener::bind(&flags.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind {}: {e}", flags.addr);
            return ExitCode::from(1);
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    }
    let servers = [ws, echo, rooms];
    let shutdown = async move {
        street::app::shutdown_signal().await;
        // WebSockets are no longer axum's once upgraded: close them here (1001).
        futures_util::future::join_all(servers.iter().map(WebSocketServer::close)).await;
    };
    let make = router.into_make_service_with_connect_info::<SocketAddr>();
    let served = match app.tls {
        // `tap_io`: axum gives `ConnectInfo<SocketAddr>` to wrapped listeners
        Some(tls) => {
            use axum::serve::ListenerExt;
            let tls = TlsListener::new(listener, tls, std::time::Duration::from_secs(10));
            axum::serve(tls.tap_io(|_| {}), make)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, make)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
