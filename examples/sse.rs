//! The seed's Server-Sent Events controller: `GET /api/events/stream` sends a `tick`
//! event with the time every second, with a 15 s heartbeat, and stops when the browser
//! goes away. `GET /` is the seed's client side (an `EventSource` that logs the ticks).
//!
//! ```text
//! PORT=3000 cargo run --example sse    # then open http://127.0.0.1:3000/
//! ```
//!
//! A reconnecting browser sends `Last-Event-ID`; ids continue after it, so the ticks it
//! shows after a server restart carry on from where it stopped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::{Html, Response};
use serde_json::json;
use street::sse::SseRequest;
use street::Controller;

// @Controller('/api/events') … @Get('/stream')
async fn stream(req: SseRequest) -> Response {
    let (sse, response) = req.create(Duration::from_secs(15)); // 15s heartbeat

    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                // ctx.req.once('close', …): the browser went away (or the server stops)
                () = sse.gone() => break,
                _ = interval.tick() => {
                    if sse.closed() { break; }
                    let _ = sse.send(&json!({ "time": iso_now() }), Some("tick"));
                }
            }
        }
        sse.close();
    });

    response
}

// Client-side, as in the seed: an EventSource that listens for `tick`.
async fn page() -> Html<&'static str> {
    Html(include_str!("assets/sse.html"))
}

#[tokio::main]
async fn main() -> Result<(), street::app::AppError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let events = Controller::new("/api/events").get("/stream", stream);
    street::app(street::AppOptions::from_env())
        .controller(events)
        .route("/", axum::routing::get(page))
        .listen()
        .await
}

/// `new Date().toISOString()`: UTC, millisecond precision.
fn iso_now() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // days since 1970-01-01 → civil date (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}
