//! SSE streams out of hyper. An SSE response lives as long as its reader, and as long as
//! hyper serves it, hyper's connection state lives too (mostly its 8 KiB read buffer): an
//! idle stream cost 12 KB. So the server reads the **first** request head of a
//! connection itself; when it is an event-stream request (`GET` with `Accept:
//! text/event-stream`, as `EventSource` sends), it runs the app's router on it, writes the
//! response head itself and then the body's events as HTTP/1.1 chunks, with nothing of
//! hyper's left. Anything else goes to hyper with the bytes read so far put back in front
//! ([`Rewind`]), so hyper sees the connection as it came.
//!
//! The takeover applies to a connection's first request: an event stream asked on a
//! connection that already served requests stays with hyper (it works the same, at
//! hyper's cost). The connection closes when the stream ends (`Connection: close`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// What the first request of a connection is.
pub(crate) enum FirstRequest<IO> {
    /// An event-stream request with nothing after its head: its head.
    EventStream { io: IO, request: Request<()> },
    /// Anything else: the connection with what was read put back in front.
    Other(Rewind<IO>),
    /// Nothing complete in time, or the client left.
    Gone,
}

/// Read the first request head (at most `max_head` bytes, within `timeout`).
pub(crate) async fn first_request<IO>(
    mut io: IO,
    timeout: Duration,
    max_head: usize,
    max_headers: usize,
) -> FirstRequest<IO>
where
    IO: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let mut scanned = 0;
    let head_end = tokio::time::timeout(timeout, async {
        loop {
            if let Some(end) = find_head_end(&buf, scanned) {
                return Ok(Some(end));
            }
            scanned = buf.len();
            if buf.len() >= max_head {
                return Ok(None); // hyper decides what an oversized head gets
            }
            if buf.capacity() == buf.len() {
                buf.reserve((max_head - buf.len()).min(4096));
            }
            if io.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
        }
    })
    .await;
    let end = match head_end {
        Ok(Ok(end)) => end,
        Ok(Err(_)) | Err(_) => return FirstRequest::Gone,
    };
    let request = end
        // nothing pipelined behind it, and within hyper's bound
        .filter(|e| *e == buf.len() && *e <= max_head)
        .and_then(|_| event_stream_request(&buf, max_headers));
    match request {
        Some(request) => FirstRequest::EventStream { io, request },
        None => FirstRequest::Other(Rewind {
            prefix: buf.freeze(),
            io,
        }),
    }
}

/// Where the head ends (after its blank line), looking from about `from` on.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let from = from.saturating_sub(3);
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4)
}

/// `head` as a request, when it is a `GET` that accepts `text/event-stream`.
fn event_stream_request(head: &[u8], max_headers: usize) -> Option<Request<()>> {
    if !head.starts_with(b"GET ") {
        return None;
    }
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers.clamp(1, 256)];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) || req.version != Some(1) {
        return None;
    }
    // what hyper must frame or answer itself stays with hyper
    let framed = req.headers.iter().any(|h| {
        ["upgrade", "content-length", "transfer-encoding", "expect"]
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
    });
    if framed {
        return None;
    }
    let wants_events = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("accept")
            && h.value
                .windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
    });
    if !wants_events {
        return None;
    }
    let mut builder = Request::builder()
        .method(http::Method::GET)
        .uri(req.path?)
        .version(http::Version::HTTP_11);
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    builder.body(()).ok()
}

/// Write `response`'s head on `io` ourselves; its body (an event stream, or whatever the
/// app answered) is the returned [`Body`]'s to write, in a task of its own. `None` when
/// there is nothing more to write (no body, or the client is gone).
pub(crate) async fn respond<IO>(
    mut io: IO,
    response: Response<axum::body::Body>,
    write_timeout: Duration,
) -> Option<Body<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (mut parts, body) = response.into_parts();
    let status = parts.status;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let h = &mut parts.headers;
    h.remove(http::header::CONTENT_LENGTH);
    h.remove(http::header::TRANSFER_ENCODING);
    h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    let exact = http_body::Body::size_hint(&body).exact();
    let chunked = !bodiless && exact.is_none();
    if chunked {
        h.insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    } else if let Some(n) = exact.filter(|_| !bodiless) {
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let head = encode_head(&parts);
    drop(parts);
    let written = tokio::time::timeout(write_timeout, async {
        io.write_all(&head).await?;
        io.flush().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) || bodiless || exact == Some(0) {
        let _ = tokio::time::timeout(write_timeout, io.shutdown()).await;
        return None;
    }
    Some(Body {
        io,
        body,
        chunked,
        write_timeout,
    })
}

/// A taken-over response's body, being written: its connection and the body, nothing
/// else (it lives as long as an event stream does).
pub(crate) struct Body<IO> {
    io: IO,
    body: axum::body::Body,
    /// Framed as chunks (no length known: an event stream); else raw bytes.
    chunked: bool,
    /// Most time one write may wait for the client to read.
    write_timeout: Duration,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Body<IO> {
    /// Write the body until it ends (then end it and the connection), the client leaves or
    /// sends anything (a request without a body has nothing more to say), or a write waits
    /// longer than the write timeout (a client that stopped reading).
    pub(crate) async fn run(self) {
        let (mut rd, mut wr) = tokio::io::split(self.io);
        let mut body = self.body;
        let mut probe = [0u8; 1];
        loop {
            let first = tokio::select! {
                frame = body.frame() => frame,
                _ = rd.read(&mut probe) => return,
            };
            // what else the body has ready now goes in the same write: a burst of events
            // costs one system call, not one each (as hyper's write buffer did)
            // (a local buffer: an idle stream keeps no write buffer)
            let (mut next, mut end, mut failed) = (Some(first), false, false);
            let (mut frames, mut len, mut polled) = (Vec::new(), 0, 0);
            while let Some(frame) = next.take() {
                polled += 1;
                match frame {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            len += data.len();
                            frames.push(data);
                        }
                    }
                    // the body ended (an event stream closed, or the server shuts down)
                    None => end = true,
                    // a body that failed: what came before goes out, then the connection
                    // ends without pretending the body is whole
                    Some(Err(_)) => failed = true,
                }
                if !end && !failed && len < BATCH_BYTES && polled < BATCH_FRAMES {
                    next = body.frame().now_or_never();
                }
            }
            if len > 0 {
                let bytes = if self.chunked {
                    chunk(&frames, len)
                } else if frames.len() == 1 {
                    frames.swap_remove(0)
                } else {
                    frames.concat().into()
                };
                drop(frames);
                if !write(&mut wr, &bytes, self.write_timeout).await {
                    return;
                }
            }
            if failed {
                return;
            }
            if end {
                if self.chunked && !write(&mut wr, b"0\r\n\r\n", self.write_timeout).await {
                    return;
                }
                let _ = tokio::time::timeout(self.write_timeout, wr.shutdown()).await;
                return;
            }
        }
    }
}

/// Most bytes of body gathered for one write: the copy a stalled reader holds while its
/// write waits (up to the write timeout), so kept small.
const BATCH_BYTES: usize = 16 * 1024;
/// Most frames taken for one write (a body with many empty frames ready still yields).
const BATCH_FRAMES: usize = 256;

/// Write and flush `bytes` within `limit`; false when that failed. What the socket takes
/// at once is written without arming a timer (the common case: a reader keeping up).
async fn write<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], limit: Duration) -> bool {
    let mut off = 0;
    while off < bytes.len() {
        // `write` is cancel-safe: a pending one wrote nothing
        match w.write(&bytes[off..]).now_or_never() {
            Some(Ok(0) | Err(_)) => return false,
            Some(Ok(n)) => off += n,
            None => break,
        }
    }
    if off == bytes.len() && matches!(w.flush().now_or_never(), Some(Ok(()))) {
        return true;
    }
    let done = tokio::time::timeout(limit, async {
        w.write_all(&bytes[off..]).await?;
        w.flush().await
    })
    .await;
    matches!(done, Ok(Ok(())))
}

/// The status line and headers.
fn encode_head(parts: &http::response::Parts) -> Bytes {
    let mut b = BytesMut::with_capacity(256);
    b.put_slice(b"HTTP/1.1 ");
    b.put_slice(parts.status.as_str().as_bytes());
    b.put_u8(b' ');
    b.put_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    b.put_slice(b"\r\n");
    for (name, value) in &parts.headers {
        b.put_slice(name.as_str().as_bytes());
        b.put_slice(b": ");
        b.put_slice(value.as_bytes());
        b.put_slice(b"\r\n");
    }
    b.put_slice(b"\r\n");
    b.freeze()
}

/// One HTTP/1.1 chunk of `parts` (`len` bytes in all).
fn chunk(parts: &[Bytes], len: usize) -> Bytes {
    let size = format!("{len:x}\r\n");
    let mut b = BytesMut::with_capacity(size.len() + len + 2);
    b.put_slice(size.as_bytes());
    for p in parts {
        b.put_slice(p);
    }
    b.put_slice(b"\r\n");
    b.freeze()
}

/// A connection with bytes already read put back in front of it.
pub(crate) struct Rewind<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Rewind<IO> {
    /// What is left of the bytes put back, and the connection.
    pub(crate) fn into_parts(self) -> (Bytes, IO) {
        (self.prefix, self.io)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // let the buffer go: hyper may keep this connection for long
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_get_that_accepts_event_streams_is_taken_over() {
        let sse = b"GET /sse?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nLast-Event-ID: e:3\r\n\r\n";
        assert_eq!(find_head_end(sse, 0), Some(sse.len()));
        assert_eq!(find_head_end(sse, sse.len() - 2), Some(sse.len()));
        let r = event_stream_request(sse, 64).expect("an event-stream request");
        assert_eq!(r.uri().path(), "/sse");
        assert_eq!(r.headers()["last-event-id"], "e:3");
        for other in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"[..],
            b"POST /sse HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n",
            b"GET /sse HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
            b"GET /sse HTTP/1.1\r\nAccept: text/html\r\n\r\n",
            b"GET \xff HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n",
            b"GET /sse HTTP/1.1\r\nAccept: text/event-stream\r\nUpgrade: websocket\r\n\r\n",
            b"GET /sse HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 5\r\n\r\n",
            b"GET /sse HTTP/1.1\r\nAccept: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(event_stream_request(other, 64).is_none());
        }
        // more headers than allowed: left to hyper (which answers them)
        assert!(event_stream_request(sse, 1).is_none());
    }

    #[test]
    fn heads_and_chunks_are_http_1_1() {
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.headers.insert("x-a", HeaderValue::from_static("1"));
        assert_eq!(
            &encode_head(&parts)[..],
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\n"
        );
        assert_eq!(
            &chunk(
                &[Bytes::from_static(b"data: "), Bytes::from_static(b"x\n\n")],
                9
            )[..],
            b"9\r\ndata: x\n\n\r\n"
        );
    }

    #[tokio::test]
    async fn what_was_read_goes_back_in_front() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"GET / HTTP/1.1\r\n\r\nrest")
            .await
            .expect("write");
        drop(a);
        let FirstRequest::Other(mut r) = first_request(b, Duration::from_secs(1), 1024, 64).await
        else {
            panic!("not an event stream");
        };
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\nrest");
    }
}
