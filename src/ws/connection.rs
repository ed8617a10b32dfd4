//! The task that runs one WebSocket connection over its `TcpStream`.
//!
//! One task per connection runs three branches in one `select!`:
//! - the **reader** waits for the socket to be readable, reads into a per-thread scratch
//!   buffer, decodes frames ([`proto::Decoder`]) and dispatches messages in order,
//!   awaiting async handlers before the next message (per-socket ordering). Only bytes of
//!   a frame that has not fully arrived are kept: an idle connection holds no buffer;
//! - the **writer** drains the socket's byte-counted outbox with vectored writes (frame
//!   header + shared payload `Bytes`, no copy), a batch per system call;
//! - the **kill** branch ends the connection at once (heartbeat reap, forced shutdown),
//!   even when the writer is stuck on a peer that does not read.
//!
//! Reader and writer borrow the same `TcpStream` (`readable`/`try_read` and
//! `writable`/`try_write_vectored` take `&self`), so no lock sits between them.
//!
//! Ending: after the last frame (a close reply, a protocol-error close, or the peer's
//! answer to our close) the write half is shut down and unread input is drained for a
//! bounded time, so the kernel sends FIN rather than RST and the peer reads our close.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

use super::close::{CloseCode, CloseInfo};
use super::envelope;
use super::handler::{panic_message, run_dispatch};
use super::proto::{self, Decoder, Event};
use super::socket::{ErrorEvent, Outbound, RawMessage, Socket};

/// How this connection interprets text frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `{type,payload,ts}` envelopes.
    Envelope,
    /// Every frame goes to raw handlers.
    Raw,
}

/// Size of the per-thread read buffer.
const SCRATCH: usize = 64 * 1024;
/// Most frames written per system call.
const BATCH: usize = 64;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

enum ReadEnd {
    /// The peer sent a close frame; `replied` is whether we queued a close reply (false
    /// when we had already sent our own close).
    PeerClosed { info: CloseInfo, replied: bool },
    /// The peer broke the protocol; a close with the matching code is queued.
    Failed(CloseInfo),
    /// TCP ended without a close frame.
    Eof,
}

enum WriteEnd {
    /// A terminal frame (close reply or failure close) was written.
    Terminal,
    /// We sent a close and the peer did not answer in time.
    CloseTimeout,
    /// Writing failed (peer gone).
    Failed,
}

/// Drive the connection until it ends; returns how it ended.
pub(crate) async fn run(
    stream: TcpStream,
    pre: Bytes,
    socket: &Socket,
    mode: Mode,
    max_payload: usize,
    close_timeout: Duration,
) -> CloseInfo {
    let reader = read_loop(&stream, pre, socket, mode, max_payload);
    let writer = write_loop(&stream, socket, close_timeout);
    let killed = async {
        loop {
            if let Some(info) = socket.inner.outbox.lock().kill.clone() {
                return info;
            }
            socket.inner.outbox.kill_notify.notified().await;
        }
    };
    tokio::pin!(reader, writer, killed);

    let info = tokio::select! {
        biased;
        info = &mut killed => return info,
        end = &mut reader => match end {
            ReadEnd::PeerClosed { info, replied: false } => info,
            ReadEnd::PeerClosed { info, replied: true } | ReadEnd::Failed(info) => {
                // let the writer put the close frame on the wire, bounded (boxed: rare path)
                let flushed = Box::pin(async {
                    tokio::select! {
                        info = &mut killed => Some(info),
                        _ = tokio::time::timeout(close_timeout, &mut writer) => None,
                    }
                })
                .await;
                if let Some(killed_info) = flushed {
                    return killed_info;
                }
                Box::pin(linger(&stream, close_timeout)).await;
                info
            }
            ReadEnd::Eof => CloseInfo::new(CloseCode::ABNORMAL, ""),
        },
        end = &mut writer => match end {
            WriteEnd::CloseTimeout => CloseInfo::new(CloseCode::ABNORMAL, "close handshake timeout"),
            WriteEnd::Terminal | WriteEnd::Failed => {
                // the reader sees EOF or the peer's close shortly; do not wait forever
                Box::pin(async {
                    tokio::select! {
                        info = &mut killed => info,
                        r = tokio::time::timeout(close_timeout, &mut reader) => match r {
                            Ok(ReadEnd::PeerClosed { info, .. } | ReadEnd::Failed(info)) => info,
                            _ => CloseInfo::new(CloseCode::ABNORMAL, "write failed"),
                        },
                    }
                })
                .await
            }
        },
    };
    // When the server started the close, its code is what handlers should see.
    socket.inner.outbox.lock().sent_close.take().unwrap_or(info)
}

/// Shut down our write half and discard input until the peer closes (bounded), so the
/// connection ends with FIN and the peer can read our last frame.
async fn linger(stream: &TcpStream, limit: Duration) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let _ = tokio::time::timeout(limit, async {
        loop {
            if std::future::poll_fn(|cx| stream.poll_read_ready(cx))
                .await
                .is_err()
            {
                return;
            }
            let n = SCRATCH_BUF.with(|s| stream.try_read(&mut s.borrow_mut()[..]));
            match n {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
    })
    .await;
}

async fn read_loop(
    stream: &TcpStream,
    pre: Bytes,
    socket: &Socket,
    mode: Mode,
    max_payload: usize,
) -> ReadEnd {
    let stats = &socket.inner.stats;
    let mut decoder = Decoder::new(max_payload);
    let mut buf = BytesMut::from(pre);
    loop {
        // Decode and handle everything buffered.
        loop {
            let event = match decoder.decode(&mut buf) {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => return fail(socket, e.close_code(), &e.to_string()),
            };
            socket.inner.alive.store(true, Ordering::Relaxed);
            match event {
                Event::Ping(p) => socket.queue_pong(p),
                Event::Pong(_) => {}
                Event::Close(c) => {
                    let info = match &c {
                        Some((code, reason)) => CloseInfo::new(CloseCode(*code), reason.clone()),
                        None => CloseInfo::new(CloseCode::NO_STATUS, ""),
                    };
                    let replied = socket.queue_close_reply(c.map(|(code, _)| code));
                    return ReadEnd::PeerClosed { info, replied };
                }
                Event::Text(b) => {
                    stats.messages_in.inc();
                    stats.bytes_in.add(b.len() as u64);
                    let Ok(text) = std::str::from_utf8(&b) else {
                        return fail(socket, 1007, "invalid UTF-8 in text");
                    };
                    // Boxed: the dispatch state (≈700 bytes) exists only while a message is
                    // handled, instead of sitting in every idle connection's task.
                    match mode {
                        Mode::Envelope => Box::pin(dispatch_envelope(socket, text)).await,
                        Mode::Raw => {
                            Box::pin(dispatch_raw(socket, RawMessage::Text(text.to_owned()))).await
                        }
                    }
                    socket.inner.alive.store(true, Ordering::Relaxed);
                }
                Event::Binary(b) => {
                    stats.messages_in.inc();
                    stats.bytes_in.add(b.len() as u64);
                    Box::pin(dispatch_raw(socket, RawMessage::Binary(b))).await;
                    socket.inner.alive.store(true, Ordering::Relaxed);
                }
            }
        }
        if buf.is_empty() {
            // Release the buffer while idle; a payload still in use keeps its own bytes.
            buf = BytesMut::new();
        }
        // Read more. `poll_read_ready` (not `readable()`) so that this task's waker replaces
        // the one hyper's finished HTTP task left in the stream's read slot; otherwise that
        // stale waker keeps the finished task's memory alive for as long as we are idle.
        if std::future::poll_fn(|cx| stream.poll_read_ready(cx))
            .await
            .is_err()
        {
            return ReadEnd::Eof;
        }
        let read = read_some(stream, &mut buf);
        match read {
            Ok(0) => return ReadEnd::Eof,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return ReadEnd::Eof,
        }
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

fn fail(socket: &Socket, code: u16, reason: &str) -> ReadEnd {
    socket.inner.stats.protocol_errors.inc();
    tracing::debug!(socket = %socket.id(), code, reason, "protocol error");
    socket.queue_failure(code, reason);
    ReadEnd::Failed(CloseInfo::new(CloseCode(code), reason))
}

async fn dispatch_envelope(socket: &Socket, text: &str) {
    let stats = &socket.inner.stats;
    let inc = match envelope::decode(text) {
        Ok(i) => i,
        Err(envelope::EnvelopeError::MalformedJson(e)) => {
            stats.malformed_json.inc();
            socket
                .report_error(ErrorEvent::MalformedJson {
                    message: e.to_string(),
                })
                .await;
            return;
        }
        Err(e) => {
            stats.not_envelope.inc();
            socket
                .report_error(ErrorEvent::NotEnvelope {
                    message: e.to_string(),
                })
                .await;
            return;
        }
    };
    let (own, wild) = socket.handlers_for(&inc.event);
    if own.is_empty() && wild.is_empty() {
        return;
    }
    let whole = if wild.is_empty() {
        None
    } else {
        serde_json::value::RawValue::from_string(text.to_owned()).ok()
    };
    let calls = own
        .into_iter()
        .map(|h| (h, inc.payload))
        .chain(wild.into_iter().map(|h| (h, whole.as_deref())));
    for (h, arg) in calls {
        // The handler itself runs inside `h` for inline handlers: catch panics there too.
        let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(arg, &inc.event)));
        let result = match called {
            Err(p) => Err(panic_message(&p)),
            Ok(Ok(out)) => run_dispatch(move || out).await,
            Ok(Err(message)) => {
                stats.payload_errors.inc();
                socket
                    .report_error(ErrorEvent::Payload {
                        event: inc.event.to_string(),
                        message,
                    })
                    .await;
                continue;
            }
        };
        if let Err(message) = result {
            stats.handler_errors.inc();
            socket
                .report_error(ErrorEvent::Handler {
                    event: inc.event.to_string(),
                    message,
                })
                .await;
        }
    }
}

async fn dispatch_raw(socket: &Socket, raw: RawMessage) {
    let handlers = socket.raw_handlers();
    if handlers.is_empty() {
        socket.inner.stats.unexpected_raw.inc();
        let (binary, len) = match &raw {
            RawMessage::Text(t) => (false, t.len()),
            RawMessage::Binary(b) => (true, b.len()),
        };
        socket
            .report_error(ErrorEvent::UnexpectedRaw { binary, len })
            .await;
        return;
    }
    for h in handlers {
        let m = raw.clone();
        if let Err(message) = run_dispatch(move || h(m)).await {
            socket.inner.stats.handler_errors.inc();
            socket
                .report_error(ErrorEvent::Handler {
                    event: "raw".into(),
                    message,
                })
                .await;
        }
    }
}

/// One frame ready for the wire.
struct Out {
    header: [u8; 10],
    header_len: u8,
    payload: Bytes,
    /// Bytes of this item counted in the outbox (data only).
    counted: usize,
}

impl Out {
    fn new(opcode: u8, payload: Bytes, counted: usize) -> Self {
        let (header, n) = proto::header(opcode, payload.len());
        Self {
            header,
            header_len: n as u8,
            payload,
            counted,
        }
    }
    fn len(&self) -> usize {
        usize::from(self.header_len) + self.payload.len()
    }
}

enum Batch {
    Frames(Vec<Out>, Option<Terminal>),
}

#[derive(PartialEq, Eq)]
enum Terminal {
    /// A close reply or failure close: the connection ends after it.
    End,
    /// Our own close: wait for the peer's answer.
    AwaitPeer,
}

async fn write_loop(stream: &TcpStream, socket: &Socket, close_timeout: Duration) -> WriteEnd {
    let inner = &socket.inner;
    let stats = &inner.stats;
    loop {
        let Batch::Frames(frames, terminal) = loop {
            {
                let mut st = inner.outbox.lock();
                if let Some(payload) = st.terminal.take() {
                    // Protocol failure or close reply: nothing else goes out.
                    break Batch::Frames(
                        vec![Out::new(proto::OP_CLOSE, payload, 0)],
                        Some(Terminal::End),
                    );
                }
                let mut frames = Vec::new();
                if let Some(p) = st.pong.take() {
                    frames.push(Out::new(proto::OP_PONG, p, 0));
                }
                if std::mem::take(&mut st.ping) {
                    frames.push(Out::new(proto::OP_PING, Bytes::new(), 0));
                }
                let mut terminal = None;
                while frames.len() < BATCH {
                    match st.queue.pop_front() {
                        Some(Outbound::Data { opcode, payload }) => {
                            let n = payload.len();
                            frames.push(Out::new(opcode, payload, n));
                        }
                        Some(Outbound::Close(code, reason)) => {
                            frames.push(Out::new(
                                proto::OP_CLOSE,
                                proto::close_payload(code.0, &reason),
                                0,
                            ));
                            terminal = Some(Terminal::AwaitPeer);
                            break;
                        }
                        None => break,
                    }
                }
                if !frames.is_empty() {
                    break Batch::Frames(frames, terminal);
                }
            }
            inner.outbox.notify.notified().await;
        };
        let result = write_frames(stream, &frames).await;
        let mut counted = 0;
        for f in &frames {
            if f.counted > 0 {
                counted += f.counted;
                stats.messages_out.inc();
                stats.bytes_out.add(f.counted as u64);
            }
        }
        {
            let mut st = inner.outbox.lock();
            st.bytes = st.bytes.saturating_sub(counted);
        }
        drop(frames);
        if result.is_err() {
            return WriteEnd::Failed;
        }
        match terminal {
            Some(Terminal::End) => return WriteEnd::Terminal,
            Some(Terminal::AwaitPeer) => {
                // the reader ends the connection when the peer's close arrives
                tokio::time::sleep(close_timeout).await;
                return WriteEnd::CloseTimeout;
            }
            None => {}
        }
    }
}

/// Write every frame, header and payload, with as few system calls as the socket allows.
async fn write_frames(stream: &TcpStream, frames: &[Out]) -> io::Result<()> {
    let mut idx = 0; // first frame not fully written
    let mut off = 0; // bytes of frames[idx] already written
    while idx < frames.len() {
        std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await?;
        let res = {
            // Built after the await, so the slices never live in the task's state.
            let mut slices = [IoSlice::new(&[]); BATCH * 2];
            let mut n = 0;
            for (i, f) in frames[idx..].iter().enumerate() {
                if n + 2 > slices.len() {
                    break;
                }
                let skip = if i == 0 { off } else { 0 };
                let h = usize::from(f.header_len);
                if skip < h {
                    slices[n] = IoSlice::new(&f.header[skip..h]);
                    n += 1;
                }
                let ps = skip.saturating_sub(h);
                if ps < f.payload.len() {
                    slices[n] = IoSlice::new(&f.payload[ps..]);
                    n += 1;
                }
            }
            stream.try_write_vectored(&slices[..n])
        };
        match res {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                while n > 0 && idx < frames.len() {
                    let left = frames[idx].len() - off;
                    if n >= left {
                        n -= left;
                        idx += 1;
                        off = 0;
                    } else {
                        off += n;
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every idle connection holds one `run` future: keep it small. Message dispatch is
    /// boxed per message for this reason (it was ~1 KB more inline). Measured in debug
    /// builds (≈1 KB when this test was written); release builds are similar.
    #[tokio::test]
    async fn the_per_connection_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let socket = Socket::new(
            Default::default(),
            1,
            1,
            None,
            None,
            http::Extensions::new(),
        );
        let reader =
            std::mem::size_of_val(&read_loop(&c, Bytes::new(), &socket, Mode::Envelope, 1));
        let whole = std::mem::size_of_val(&run(
            c,
            Bytes::new(),
            &socket,
            Mode::Envelope,
            1,
            Duration::ZERO,
        ));
        assert!(reader <= 512, "read_loop future is {reader} bytes");
        assert!(whole <= 1536, "connection future is {whole} bytes");
    }
}
