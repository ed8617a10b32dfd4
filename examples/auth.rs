//! The seed's "Authenticated WebSocket connections": validate a JWT from the query string
//! in the connection handler; no or bad token → close 4001.
//!
//! `GET /token?user=NAME` issues a token for trying it out. The secret comes from
//! `STREET_JWT_SECRET` (a development default is used, with a warning, when unset).

use axum::extract::Query;
use street::container::Inject;
use street::jwt::{JwtOptions, JwtService};
use street::ws::{CloseCode, ConnectRequest, Socket, WebSocketServer, WsOptions};

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    #[serde(rename = "userId")]
    user_id: String,
}

#[derive(Clone)]
struct UserId(String);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The secret comes from STREET_JWT_SECRET; a development default keeps the example runnable.
    let jwt = JwtService::from_env().or_else(|_| {
        eprintln!(
            "warning: {} is not set; using a development secret",
            street::jwt::SECRET_ENV
        );
        JwtService::new(
            JwtOptions::default().with_secret(Some("development-secret-change-me".into())),
        )
    })?;
    street::container().register(jwt);

    let wss = WebSocketServer::new(WsOptions::default());
    wss.on_connection(|socket: Socket, req: ConnectRequest| {
        let Some(token) = req.query_param("token") else {
            let _ = socket.close(CloseCode(4001), "Unauthorized");
            return;
        };

        let Ok(jwt) = street::container().resolve::<JwtService>() else {
            let _ = socket.close(CloseCode::INTERNAL_ERROR, "JWT service missing");
            return;
        };
        match jwt.verify::<Claims>(&token) {
            Ok(payload) => socket.set(UserId(payload.user_id)),
            Err(_) => {
                let _ = socket.close(CloseCode(4001), "Invalid token");
                return;
            }
        }

        // Connection is authenticated — proceed
        let user_id = socket.get::<UserId>().map(|u| u.0);
        let _ = socket.emit("connected", &serde_json::json!({ "userId": user_id }));
    });

    #[derive(serde::Deserialize)]
    struct TokenQuery {
        user: String,
    }
    let issue = |Inject(jwt): Inject<JwtService>, Query(q): Query<TokenQuery>| async move {
        jwt.sign(&Claims { user_id: q.user }).unwrap_or_default()
    };
    street::app(street::AppOptions::from_env())
        .route("/token", axum::routing::get(issue))
        .websocket(&wss)
        .listen()
        .await?;
    Ok(())
}
