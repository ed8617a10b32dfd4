//! The task that runs one WebSocket connection over its byte stream (a
//! [`Transport`]: a `TcpStream` on the fast path, or any `AsyncRead + AsyncWrite`).
//!
//! The steady state is one hand-written future, [`Conn`], rather than `select!` over
//! reader, writer and kill futures: an idle connection's whole state is this struct
//! (decoder, an empty read buffer, an empty write batch, a few flags) plus one
//! `AtomicWaker` in the socket, which keeps idle connections small. Each poll:
//! 1. a kill (heartbeat reap, forced shutdown) ends it at once, even when the peer does
//!    not read;
//! 2. the writer drains the socket's byte-counted outbox with vectored writes (frame
//!    header + shared payload `Bytes`, no copy), up to 64 frames per system call;
//! 3. the reader decodes buffered frames ([`proto::Decoder`]) and dispatches messages in
//!    order: a message's handlers finish (async ones are polled here) before the next
//!    frame is decoded. When the buffer runs dry it reads into a per-thread scratch
//!    buffer, so an idle connection holds no read buffer at all.
//!
//! Reader and writer are two halves of one poll over the one stream the future owns; the
//! stream's differences (readiness and `try_*` calls on TCP, flushes on TLS) stay behind
//! [`Transport`].
//!
//! Ending: after the last frame (a close reply, a protocol-error close) the write half is
//! shut down and unread input is drained for a bounded time, so the kernel sends FIN
//! rather than RST and the peer reads our close. After our own close, reading goes on
//! until the peer answers or `close_timeout` passes.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::close::{CloseCode, CloseInfo};
use super::deflate::PerMessage;
use super::dispatch;
use super::handler::BoxFuture;
use super::limits::Bucket;
use super::outbox::{BatchEnd, Frame, Status};
use super::proto::{Decoder, Event};
use super::socket::{RawMessage, Socket};
use super::transport::{linger, Transport};

/// How this connection interprets text frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `{type,payload,ts}` envelopes.
    Envelope,
    /// Every frame goes to raw handlers.
    Raw,
}

/// Most frames written per system call.
const BATCH: usize = 64;

/// How the steady state ended.
pub(crate) enum End {
    /// Killed: drop now.
    Killed(CloseInfo),
    /// The peer answered our close (or closed while we were closing).
    PeerClosed(CloseInfo),
    /// Our terminal frame (close reply or protocol-error close) is written: linger, then end.
    Terminal(CloseInfo),
    /// TCP ended without a close frame.
    Eof,
    /// Writing failed (peer gone).
    WriteFailed,
    /// The closing handshake did not finish in time.
    CloseTimeout(Option<CloseInfo>),
}

impl<'a, T: Transport> Conn<'a, T> {
    /// The steady state of a connection over `stream`; `pre` holds bytes that arrived with
    /// the handshake. Await it by `&mut`, then pass the result to [`conclude`].
    pub(crate) fn new(
        stream: T,
        pre: Bytes,
        socket: &'a Socket,
        mode: Mode,
        opts: &super::WsOptions,
        deflate: Option<Box<PerMessage>>,
    ) -> Self {
        let now = std::time::Instant::now();
        let (msg_rate, byte_rate) = (opts.max_messages_per_sec, opts.max_bytes_per_sec);
        Conn {
            stream,
            socket,
            mode,
            msg_rate,
            byte_rate,
            msgs: Bucket::full(msg_rate as f32, now),
            bytes: Bucket::full(byte_burst(byte_rate, opts.max_payload), now),
            decoder: Decoder::new(opts.max_payload),
            deflate,
            rbuf: BytesMut::from(pre),
            dispatching: None,
            out: Vec::new(),
            idx: 0,
            off: 0,
            batch_end: None,
            read_stopped: false,
            pending_end: None,
            first_pending: opts.first_message_timeout.is_some(),
            deadline: opts
                .first_message_timeout
                .map(|t| Box::pin(tokio::time::sleep(t))),
            close_timeout_ms: u32::try_from(opts.close_timeout.as_millis()).unwrap_or(u32::MAX),
        }
    }
}

/// Finish a connection whose steady state ended with `end`: linger after our last frame
/// when there is one, and tell how it ended (the server's own close code when the
/// server started the close).
pub(crate) async fn conclude<T: Transport>(
    end: End,
    stream: &mut T,
    socket: &Socket,
    close_timeout: Duration,
) -> CloseInfo {
    let info = match end {
        End::Killed(info) => return info,
        End::PeerClosed(info) => info,
        End::Terminal(info) => {
            linger(stream, close_timeout).await;
            info
        }
        End::Eof => CloseInfo::new(CloseCode::ABNORMAL, ""),
        End::WriteFailed => CloseInfo::new(CloseCode::ABNORMAL, "write failed"),
        End::CloseTimeout(info) => {
            info.unwrap_or_else(|| CloseInfo::new(CloseCode::ABNORMAL, "close handshake timeout"))
        }
    };
    socket.inner.outbox.take_sent_close().unwrap_or(info)
}

/// The steady state of one connection (see the module docs).
pub(crate) struct Conn<'a, T> {
    pub(crate) stream: T,
    socket: &'a Socket,
    mode: Mode,
    /// Inbound rate limits (0 = off) and their buckets.
    msg_rate: u32,
    byte_rate: u32,
    msgs: Bucket,
    bytes: Bucket,
    decoder: Decoder,
    /// permessage-deflate's state, when agreed (boxed: one pointer otherwise).
    deflate: Option<Box<PerMessage>>,
    /// Bytes of frames that have not fully arrived (empty, unallocated, when idle).
    rbuf: BytesMut,
    /// The handlers of the current message, when they did not finish in one poll.
    dispatching: Option<BoxFuture<()>>,
    /// The write batch being written (empty when idle).
    out: Vec<Frame>,
    idx: u32,
    off: usize,
    batch_end: Option<BatchEnd>,
    /// No more reading: a close reply or failure close is on its way.
    read_stopped: bool,
    /// How the connection ends once the terminal frame is written (boxed: rare).
    pending_end: Option<Box<CloseInfo>>,
    /// Started when a close is under way.
    /// The first-message deadline while `first_pending`, then the closing deadline.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// `deadline` is the first-message deadline (no message received yet).
    first_pending: bool,
    close_timeout_ms: u32,
}

impl<T: Transport> Future for Conn<'_, T> {
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let this = self.get_mut();
        loop {
            let closing = match this.socket.inner.outbox.status(cx.waker()) {
                Status::Killed(info) => return Poll::Ready(End::Killed(info)),
                Status::Closing => true,
                Status::Open => false,
            };
            // A close is under way (ours, a slow-consumer disconnect, a reply): bound it by
            // `close_timeout` even if the close frame is stuck behind a peer that does not read.
            if closing && (this.deadline.is_none() || this.first_pending) {
                this.start_deadline();
            }
            if let Some(d) = this.deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() && this.first_pending {
                    this.first_pending = false;
                    this.deadline = None;
                    this.socket.inner.stats.first_message_timeouts.inc();
                    this.end_with(1008, "no message received");
                    continue;
                }
            }
            if let Some(d) = this.deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(End::CloseTimeout(this.pending_end.take().map(|b| *b)));
                }
            }
            match this.poll_write(cx) {
                Poll::Ready(Err(_)) => return Poll::Ready(End::WriteFailed),
                Poll::Ready(Ok(end)) => return Poll::Ready(end),
                Poll::Pending => {}
            }
            if this.read_stopped {
                return Poll::Pending;
            }
            match this.poll_read(cx) {
                Poll::Ready(Some(end)) => return Poll::Ready(end),
                // progress (a message handled, or a close under way): write what it queued
                Poll::Ready(None) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: Transport> Conn<'_, T> {
    fn start_deadline(&mut self) {
        if self.first_pending {
            self.first_pending = false;
            self.deadline = None;
        }
        if self.deadline.is_none() {
            let t = Duration::from_millis(u64::from(self.close_timeout_ms));
            self.deadline = Some(Box::pin(tokio::time::sleep(t)));
        }
    }

    /// Take the next batch from the outbox into `self.out`; false when there is none.
    fn take_batch(&mut self) -> bool {
        self.batch_end = self.socket.inner.outbox.next_batch(&mut self.out, BATCH);
        if let Some(d) = self.deflate.as_deref_mut().map(|d| &mut d.deflater) {
            let stats = &self.socket.inner.stats;
            for f in &mut self.out {
                if let Some(fresh) = f.compress(d) {
                    stats.compressed_out.inc();
                    stats.compressed_bytes_out.add(f.payload.len() as u64);
                    if fresh {
                        stats.compressions.inc();
                    }
                }
            }
        }
        !self.out.is_empty()
    }

    /// Write until the outbox is empty (`Pending`, woken by the outbox) or the socket is
    /// full (`Pending`, woken by the socket). `Ready` ends the connection.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<End>> {
        loop {
            if self.out.is_empty() && !self.take_batch() {
                return Poll::Pending;
            }
            while (self.idx as usize) < self.out.len() {
                let res = {
                    let mut slices = [IoSlice::new(&[]); BATCH * 2];
                    let mut n = 0;
                    for (i, f) in self.out[self.idx as usize..].iter().enumerate() {
                        if n + 2 > slices.len() {
                            break;
                        }
                        let skip = if i == 0 { self.off } else { 0 };
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
                    match self.stream.poll_write_vectored(cx, &slices[..n]) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(r) => r,
                    }
                };
                match res {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(mut n) => {
                        while n > 0 && (self.idx as usize) < self.out.len() {
                            let left = self.out[self.idx as usize].len() - self.off;
                            if n >= left {
                                n -= left;
                                self.idx += 1;
                                self.off = 0;
                            } else {
                                self.off += n;
                                n = 0;
                            }
                        }
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            // The batch is written; a buffering stream (TLS) sends it now.
            match self.stream.poll_flush(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            // The batch is on the wire.
            let stats = &self.socket.inner.stats;
            let mut counted = 0;
            for f in &self.out {
                if f.counted > 0 {
                    counted += f.counted;
                    stats.messages_out.inc();
                    stats.bytes_out.add(f.counted as u64);
                }
            }
            self.socket.inner.outbox.ack(counted);
            // Release the batch's memory: idle connections keep nothing.
            self.out = Vec::new();
            self.idx = 0;
            self.off = 0;
            match self.batch_end.take() {
                Some(BatchEnd::Terminal) => {
                    let info = self
                        .pending_end
                        .take()
                        .map_or_else(|| CloseInfo::new(CloseCode::NORMAL, ""), |b| *b);
                    return Poll::Ready(Ok(End::Terminal(info)));
                }
                Some(BatchEnd::AwaitPeer) => self.start_deadline(),
                None => {}
            }
        }
    }

    /// Handle input. `Ready(None)` means progress was made (run the writer again);
    /// `Ready(Some(end))` ends the connection; `Pending` waits for the socket or for a
    /// handler.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<End>> {
        let socket = self.socket;
        loop {
            if let Some(f) = self.dispatching.as_mut() {
                match f.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        self.dispatching = None;
                        // a handler that ran long still counts as activity of a live peer:
                        // its pongs were not read meanwhile
                        socket.handling_ended();
                        return Poll::Ready(None);
                    }
                }
            }
            let inflate = self.deflate.as_deref_mut().map(|d| &mut d.inflater);
            let event = match self.decoder.decode(&mut self.rbuf, inflate) {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    if self.rbuf.is_empty() {
                        // Release the buffer while idle; payloads in use keep their bytes.
                        self.rbuf = BytesMut::new();
                    }
                    match self.stream.poll_read_some(cx, &mut self.rbuf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Some(End::Eof)),
                        Poll::Ready(Ok(_)) => continue,
                    }
                }
                Err(e) => {
                    self.fail(e.close_code(), &e.to_string());
                    return Poll::Ready(None);
                }
            };
            socket.inner.alive.store(true, Ordering::Relaxed);
            // Control frames and fragments pass the rate limits too (as one message each,
            // and their bytes): a flood of pings or empty continuations is not free.
            match &event {
                Event::Ping(p) | Event::Pong(p) if !self.within_rate_or_close(p.len()) => {
                    return Poll::Ready(None);
                }
                Event::Fragment if !self.within_rate_or_close(0) => return Poll::Ready(None),
                _ => {}
            }
            match event {
                Event::Ping(p) => socket.inner.outbox.pong(p),
                Event::Pong(_) | Event::Fragment => {}
                Event::Close(c) => {
                    let info = match &c {
                        Some((code, reason)) => CloseInfo::new(CloseCode(*code), reason.clone()),
                        None => CloseInfo::new(CloseCode::NO_STATUS, ""),
                    };
                    if socket.inner.outbox.close_reply(c.map(|(code, _)| code)) {
                        // our reply goes out, then the connection ends
                        self.pending_end = Some(Box::new(info));
                        self.read_stopped = true;
                        self.start_deadline();
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(End::PeerClosed(info)));
                }
                Event::Text(text) => {
                    // a compressed message costs its wire size or its inflated size,
                    // whichever is more
                    let len = text.len().max(self.decoder.compressed_len());
                    if !self.admit_message(len) {
                        return Poll::Ready(None);
                    }
                    self.dispatch(match self.mode {
                        Mode::Envelope => Box::pin(dispatch::envelope(socket.clone(), text)),
                        Mode::Raw => {
                            Box::pin(dispatch::raw(socket.clone(), RawMessage::Text(text)))
                        }
                    });
                }
                Event::Binary(b) => {
                    let len = b.len().max(self.decoder.compressed_len());
                    if !self.admit_message(len) {
                        return Poll::Ready(None);
                    }
                    self.dispatch(Box::pin(dispatch::raw(
                        socket.clone(),
                        RawMessage::Binary(b),
                    )));
                }
            }
        }
    }

    /// Handle one message: `poll_read` polls `f` before reading on. Boxed: the dispatch
    /// state exists only while a message is handled. Meanwhile the heartbeat spares the
    /// socket, for a while (see [`Socket::heartbeat_alive`]); from the handler's end on,
    /// the peer's silence counts again.
    fn dispatch(&mut self, f: BoxFuture<()>) {
        self.socket.handling_started();
        self.dispatching = Some(f);
    }

    fn fail(&mut self, code: u16, reason: &str) {
        self.socket.inner.stats.protocol_errors.inc();
        tracing::debug!(socket = %self.socket.id(), code, reason, "protocol error");
        self.end_with(code, reason);
    }

    /// Account for an incoming message of `len` bytes: counters, the first-message
    /// deadline, and the rate limits. False when it broke a limit (a 1008 close is queued).
    fn admit_message(&mut self, len: usize) -> bool {
        let stats = &self.socket.inner.stats;
        stats.messages_in.inc();
        stats.bytes_in.add(len as u64);
        if self.first_pending {
            self.first_pending = false;
            self.deadline = None;
        }
        self.within_rate_or_close(len)
    }

    /// Take a frame of `len` bytes from the rate limits, or queue the 1008 close.
    fn within_rate_or_close(&mut self, len: usize) -> bool {
        if self.within_rate(len) {
            return true;
        }
        self.socket.inner.stats.rate_limited.inc();
        self.end_with(1008, "rate limit exceeded");
        false
    }

    /// Whether a message of `len` bytes is within the connection's rate limits.
    fn within_rate(&mut self, len: usize) -> bool {
        let now = std::time::Instant::now();
        let rate = self.msg_rate as f32;
        let ok_msgs = self.msg_rate == 0 || self.msgs.take(1.0, rate, rate, now);
        let burst = byte_burst(self.byte_rate, self.decoder.max_payload());
        let ok_bytes = self.byte_rate == 0
            || self
                .bytes
                .take(len as f32, self.byte_rate as f32, burst, now);
        ok_msgs && ok_bytes
    }

    /// Close with `code` before anything else, then end.
    fn end_with(&mut self, code: u16, reason: &str) {
        let socket = self.socket;
        let info = CloseInfo::new(CloseCode(code), reason);
        if !socket.inner.outbox.fail(code, reason) {
            // Our close is taken for the wire and no second close may follow it.
            if self.batch_end == Some(BatchEnd::AwaitPeer) {
                // still being written: end right after it (handlers see our close, which
                // is what the peer reads)
                self.batch_end = Some(BatchEnd::Terminal);
                self.pending_end = Some(Box::new(info));
                self.read_stopped = true;
            } else {
                // written: end now
                socket.inner.outbox.kill(info);
            }
            return;
        }
        self.pending_end = Some(Box::new(info));
        self.read_stopped = true;
        self.start_deadline();
    }
}

/// The byte bucket's size: a second at the configured rate, and never less than one
/// message of the largest allowed size.
fn byte_burst(rate: u32, max_payload: usize) -> f32 {
    (rate as f32).max(max_payload as f32)
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every idle connection holds one `Conn` (inside its task): keep it small. Message
    /// dispatch and closing steps are boxed for this reason.
    #[test]
    fn the_connection_state_stays_small() {
        let n = std::mem::size_of::<Conn<'static, tokio::net::TcpStream>>();
        eprintln!("sizes: Conn {n}");
        assert!(n <= 320, "Conn is {n} bytes");
    }
}
