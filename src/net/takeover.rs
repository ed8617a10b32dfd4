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
    let head_end = tokio::time::timeout(timeout, async {
        loop {
            if let Some(end) = find_head_end(&buf) {
                return Ok(Some(end));
            }
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
        .filter(|e| *e == buf.len()) // nothing pipelined behind it
        .and_then(|_| event_stream_request(&buf, max_headers));
    match request {
        Some(request) => FirstRequest::EventStream { io, request },
        None => FirstRequest::Other(Rewind {
            prefix: buf.freeze(),
            io,
        }),
    }
}

/// Where the head ends (after its blank line).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
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

/// Write `response` on `io` ourselves: anything but an event stream whole (up to
/// `max_body` bytes), and the connection ends; an event stream's head, and then the
/// [`EventStream`] that writes its events, to run for as long as it lasts.
pub(crate) async fn respond<IO>(
    io: IO,
    response: Response<axum::body::Body>,
    max_body: usize,
) -> Option<EventStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (mut parts, body) = response.into_parts();
    let events = parts.status == StatusCode::OK
        && parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    let mut io = io;
    if !events {
        let collected = http_body_util::Limited::new(body, max_body)
            .collect()
            .await
            .ok()?;
        let data = collected.to_bytes();
        parts.headers.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(data.len() as u64),
        );
        let _ = io.write_all(&encode_head(&parts)).await;
        let _ = io.write_all(&data).await;
        let _ = io.shutdown().await;
        return None;
    }
    parts.headers.insert(
        http::header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    io.write_all(&encode_head(&parts)).await.ok()?;
    Some(EventStream { io, body })
}

/// A taken-over event stream: its connection and its body, nothing else.
pub(crate) struct EventStream<IO> {
    io: IO,
    body: axum::body::Body,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> EventStream<IO> {
    /// Write the body's events as chunks until it ends (then end the chunked body) or the
    /// reader leaves.
    pub(crate) async fn run(self) {
        let (mut rd, mut wr) = tokio::io::split(self.io);
        let mut body = self.body;
        let mut probe = [0u8; 16];
        loop {
            tokio::select! {
                frame = body.frame() => match frame {
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else { continue };
                        if !data.is_empty() && wr.write_all(&chunk(&data)).await.is_err() {
                            return;
                        }
                    }
                    // the stream ended (closed, or the server shuts down): end the body
                    _ => {
                        let _ = wr.write_all(b"0\r\n\r\n").await;
                        let _ = wr.shutdown().await;
                        return;
                    }
                },
                // a reader sends nothing more: end of file or an error means it left
                r = rd.read(&mut probe) => {
                    if !matches!(r, Ok(n) if n > 0) {
                        return;
                    }
                }
            }
        }
    }
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

/// One HTTP/1.1 chunk.
fn chunk(data: &Bytes) -> Bytes {
    let size = format!("{:x}\r\n", data.len());
    let mut b = BytesMut::with_capacity(size.len() + data.len() + 2);
    b.put_slice(size.as_bytes());
    b.put_slice(data);
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
        let r = event_stream_request(sse, 64).expect("an event-stream request");
        assert_eq!(r.uri().path(), "/sse");
        assert_eq!(r.headers()["last-event-id"], "e:3");
        for other in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"[..],
            b"POST /sse HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n",
            b"GET /sse HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
            b"GET /sse HTTP/1.1\r\nAccept: text/html\r\n\r\n",
            b"GET \xff HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n",
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
            &chunk(&Bytes::from_static(b"data: x\n\n"))[..],
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
