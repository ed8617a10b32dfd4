//! WebSocket client connections: connecting (with a per-process address cache), opening
//! many at a bounded concurrency, and reading a broadcast's id from a frame.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) async fn connect(url: &str) -> Result<Ws, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad url: {e}"))?;
    // Resolve each address once per process, not per connection: the client's resolver
    // goes through the blocking pool for every connect, which made the load generator,
    // not the server, the limit in handshake runs.
    static ADDRS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, std::net::SocketAddr>>,
    > = std::sync::OnceLock::new();
    let cache = ADDRS.get_or_init(Default::default);
    let known = cache.lock().ok().and_then(|m| m.get(url).copied());
    let addr = match known {
        Some(a) => a,
        None => {
            let host = uri
                .host()
                .ok_or("url has no host")?
                .trim_matches(['[', ']'])
                .to_owned();
            let tls = uri.scheme_str() == Some("wss");
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let a = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| e.to_string())?
                .next()
                .ok_or("no address")?;
            if let Ok(mut m) = cache.lock() {
                m.insert(url.to_owned(), a);
            }
            a
        }
    };
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let stream = if uri.scheme_str() == Some("wss") {
        let config = TLS.get().ok_or("wss:// needs --ca PATH")?.clone();
        let host = uri
            .host()
            .ok_or("url has no host")?
            .trim_matches(['[', ']']);
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| format!("server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        MaybeTlsStream::Rustls(tls)
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    let (ws, _) = ClientBuilder::from_uri(uri)
        .connect_on(stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// The TLS client configuration for `wss://` URLs (from `--ca`).
static TLS: std::sync::OnceLock<Arc<tokio_rustls::rustls::ClientConfig>> =
    std::sync::OnceLock::new();

/// Trust the certificates in the PEM file `path` for `wss://` URLs.
pub(crate) fn trust_ca(path: &str) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("--ca {path}: {e}"))?
    {
        roots
            .add(cert.map_err(|e| format!("--ca {path}: {e}"))?)
            .map_err(|e| format!("--ca {path}: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let _ = TLS.set(Arc::new(config));
    Ok(())
}

/// Open `n` connections with at most `concurrency` handshakes in flight.
pub(crate) async fn open_many(
    url: &str,
    n: usize,
    concurrency: usize,
) -> (Vec<Ws>, usize, Duration) {
    open_spread(&[url.to_owned()], n, concurrency).await
}

/// Open `n` connections spread round-robin over `urls` (connection `i` to `urls[i % k]`).
pub(crate) async fn open_spread(
    urls: &[String],
    n: usize,
    concurrency: usize,
) -> (Vec<Ws>, usize, Duration) {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await;
        let url = urls[i % urls.len().max(1)].clone();
        tasks.push(tokio::spawn(async move {
            let r = connect(&url).await;
            drop(permit);
            r
        }));
    }
    let mut ok = Vec::with_capacity(n);
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(ws)) => ok.push(ws),
            _ => failed += 1,
        }
    }
    (ok, failed, start.elapsed())
}

/// The integer payload of `{"type":"broadcast","payload":N,"ts":…}`, or the `id` of a
/// chat-like payload `{"type":…,"payload":{"id":N,…}}`, without a JSON parse.
pub(crate) fn payload_id(text: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"payload\":";
    const ID: &[u8] = b"{\"id\":";
    let mut at = text.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    if text[at..].starts_with(ID) {
        at += ID.len();
    }
    let mut n: u64 = 0;
    let mut any = false;
    for &b in &text[at..] {
        if b.is_ascii_digit() {
            n = n * 10 + u64::from(b - b'0');
            any = true;
        } else {
            break;
        }
    }
    any.then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_id_parses_the_integer() {
        assert_eq!(
            payload_id(br#"{"type":"broadcast","payload":1234,"ts":5}"#),
            Some(1234)
        );
        assert_eq!(payload_id(br#"{"type":"broadcast","payload":"x"}"#), None);
        assert_eq!(payload_id(b"nothing"), None);
        assert_eq!(
            payload_id(br#"{"type":"broadcast","payload":{"id":77,"text":"x"},"ts":5}"#),
            Some(77)
        );
    }
}
