//! Server-Sent Events readers of `GET /sse` (raw HTTP/1.1 over TCP), for `sse-fanout`.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Open an SSE stream at `GET /sse` on the host of the WebSocket `url`; after the
/// response head, the socket carries the (chunked) event stream.
pub(crate) async fn open_sse(url: &str) -> Result<TcpStream, String> {
    let (host, _) = host_and_path(url)?;
    let request = format!("GET /sse HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
    let (tcp, head) = request_head(&host, &request).await?;
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&head[..head.len().min(40)]).into_owned());
    }
    Ok(tcp)
}

/// The `host:port` and the path (with its query) of `url`.
pub(crate) fn host_and_path(url: &str) -> Result<(String, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad url: {e}"))?;
    let host = uri
        .authority()
        .ok_or("url has no host")?
        .as_str()
        .to_owned();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok((host, path))
}

/// Connect to `host`, send `request`, and read the response head byte by byte (nothing
/// after it is consumed): the connection and the head.
pub(crate) async fn request_head(
    host: &str,
    request: &str,
) -> Result<(TcpStream, Vec<u8>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(host).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await.map_err(|e| e.to_string())? == 0 {
            return Err("eof in response head".into());
        }
        head.push(b[0]);
        if head.len() > 8192 {
            return Err("response head too long".into());
        }
    }
    Ok((tcp, head))
}

/// Read an SSE stream and call `on_id` with each `data: N` line's number.
pub(crate) async fn read_sse_ids(mut tcp: TcpStream, on_id: impl Fn(u64)) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        carry.extend_from_slice(&buf[..n]);
        let Some(end) = carry.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        for line in carry[..end].split(|&b| b == b'\n') {
            if let Some(rest) = line.strip_prefix(b"data: ") {
                let digits = rest.iter().take_while(|b| b.is_ascii_digit());
                let mut id = 0u64;
                let mut any = false;
                for &d in digits {
                    id = id * 10 + u64::from(d - b'0');
                    any = true;
                }
                if any {
                    on_id(id);
                }
            }
        }
        carry.drain(..=end);
    }
}

/// Open `n` SSE readers with at most `concurrency` in flight.
pub(crate) async fn open_many_sse(
    url: &str,
    n: usize,
    concurrency: usize,
) -> Result<Vec<TcpStream>, String> {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await;
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let r = open_sse(&url).await;
            drop(permit);
            r
        }));
    }
    let mut ok = Vec::with_capacity(n);
    for t in tasks {
        ok.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(ok)
}
