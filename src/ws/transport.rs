//! The byte stream under a WebSocket connection.
//!
//! The connection state machine ([`Conn`](super::connection::Conn)) reads and writes
//! through [`Transport`], which has two implementations:
//! - `TcpStream`, the fast path: readiness plus `try_read`/`try_write_vectored`, reads
//!   into a per-thread scratch buffer with readiness cleared after a short read (one
//!   system call per message), and no flush (the kernel sends);
//! - [`Io<T>`] for any `AsyncRead + AsyncWrite` stream: a TLS stream, hyper's `Upgraded`
//!   when the connection is not a plain TCP stream (the host app's own server, a Unix
//!   socket), or `tokio::io::duplex` in the state machine's tests. Writes are flushed
//!   after each batch (TLS buffers records).
//!
//! Which one a connection gets is decided once, when hyper hands the connection over
//! (`upgrade.rs`).

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Size of the per-thread read buffer.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// What the connection state machine needs from its byte stream.
pub(crate) trait Transport: Send + Unpin + 'static {
    /// Read what is available and append it to `buf`; `Ok(0)` is end of stream. Reads
    /// go through a per-thread buffer, so an idle connection holds none.
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>>;

    /// Write some of `bufs`, in order.
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>>;

    /// Push buffered bytes to the peer (a TLS record under way).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// No more writing: the peer reads end of stream after our last frame.
    fn poll_shutdown_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Transport for TcpStream {
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            match read_some(self, buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_write_ready(cx))?;
            match self.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown_write(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self).shutdown(std::net::Shutdown::Write))
    }
}

/// One `recv` into the per-thread scratch buffer, appending what arrived to `buf`.
///
/// A short read means the socket's receive queue is drained, so readiness is cleared
/// right away (as libuv does) instead of paying a second `recv` that returns EAGAIN:
/// that is one system call less per message. It is safe because tokio clears readiness
/// only for the event tick observed before the read; data that arrives afterwards
/// raises a new event and wakes the reader again.
fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    use std::io::Read;
    let mut got: io::Result<usize> = Err(io::ErrorKind::WouldBlock.into());
    let _ = stream.try_io(tokio::io::Interest::READABLE, || {
        SCRATCH_BUF.with(|s| {
            let mut s = s.borrow_mut();
            let sock = socket2::SockRef::from(stream);
            match (&*sock).read(&mut s[..]) {
                Ok(n) => {
                    buf.extend_from_slice(&s[..n]);
                    got = Ok(n);
                    if n > 0 && n < s.len() {
                        // drained: clear readiness without another system call
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
                Err(e) => {
                    got = Err(e);
                    Ok(())
                }
            }
        })
    });
    got
}

/// Any `AsyncRead + AsyncWrite` stream as a [`Transport`] (TLS, hyper's `Upgraded`,
/// `tokio::io::duplex`).
#[derive(Debug)]
pub(crate) struct Io<T>(pub(crate) T);

impl<T> Transport for Io<T>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        SCRATCH_BUF.with(|s| {
            let mut s = s.borrow_mut();
            let mut rb = ReadBuf::new(&mut s[..]);
            ready!(Pin::new(&mut self.0).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            buf.extend_from_slice(got);
            Poll::Ready(Ok(got.len()))
        })
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Write all of `bytes`, then flush.
pub(crate) async fn write_all<T: Transport>(io: &mut T, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n =
            std::future::poll_fn(|cx| io.poll_write_vectored(cx, &[IoSlice::new(bytes)])).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    std::future::poll_fn(|cx| io.poll_flush(cx)).await
}

/// Shut down our write half and discard input until the peer closes (bounded by
/// `limit`), so the connection ends with FIN rather than RST and the peer can read our
/// last frame.
pub(crate) async fn linger<T: Transport>(io: &mut T, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        let _ = std::future::poll_fn(|cx| io.poll_shutdown_write(cx)).await;
        let mut sink = BytesMut::new();
        loop {
            match std::future::poll_fn(|cx| io.poll_read_some(cx, &mut sink)).await {
                Ok(0) | Err(_) => return,
                Ok(_) => sink.clear(),
            }
        }
    })
    .await;
}
