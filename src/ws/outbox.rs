//! One connection's outbound queue, and every rule about what goes out and in what order.
//!
//! Producers ([`Socket`](super::Socket): emits, closes; the reader: pongs, close replies,
//! protocol failures; the heartbeat: pings and kills) call the methods that queue; the
//! connection task is the one consumer: [`Outbox::next_batch`] takes frames for the
//! wire and [`Outbox::ack`] gives their bytes back once written.
//!
//! The rules:
//! - data is counted in bytes against `max_bytes`; over it, a volatile message is
//!   dropped for this client and a normal one disconnects it as a slow consumer (queue
//!   dropped, close 4008). An empty queue takes one message of any size;
//! - after our close frame is queued nothing more is accepted; data queued before it
//!   goes out first;
//! - a *terminal* close (our reply to the peer's close, or a protocol-error close) goes
//!   out before anything else and ends the connection;
//! - pongs and the heartbeat's ping go ahead of data; at most [`MAX_PENDING_PONGS`]
//!   pongs wait (older ones are dropped, which RFC 6455 allows), so a ping flood from
//!   a peer that does not read cannot grow memory;
//! - a kill ends the connection at once, without a handshake.
//!
//! Idle, the queue allocates nothing: a `Mutex` over empty collections and optional
//! boxes, plus an `AtomicWaker` (16 bytes, where a `Notify` and its future would cost
//! several times that in every idle connection).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

use bytes::Bytes;
use futures_util::task::AtomicWaker;

use super::close::{truncate_reason, CloseCode, CloseInfo};
use super::proto;

/// Pongs queued at most per connection (older ones are dropped under a ping flood).
pub(crate) const MAX_PENDING_PONGS: usize = 16;

/// An item in the queue.
#[derive(Debug)]
enum Outbound {
    /// A text or binary message (payload shared, never copied).
    Data { opcode: u8, payload: Bytes },
    /// Our close frame.
    Close(CloseCode, String),
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outbound>,
    /// Bytes of data messages queued and not yet written.
    bytes: usize,
    /// A close frame has been queued (ours, or a terminal one): no more data.
    closing: bool,
    /// Drop the connection now, without a close handshake.
    kill: Option<Box<CloseInfo>>,
    /// A ping should be sent ahead of queued data.
    ping: bool,
    /// The close the server initiated (what close handlers see if the peer echoes it).
    sent_close: Option<Box<CloseInfo>>,
    /// Our close frame has left the queue for the wire: no other close may follow it.
    close_written: bool,
    /// Pongs to send (one per ping received, bounded), ahead of data.
    // Boxed on purpose: 8 bytes in every idle socket instead of a 32-byte VecDeque.
    #[allow(clippy::box_collection)]
    pongs: Option<Box<VecDeque<Bytes>>>,
    /// A close frame payload to send before anything else, after which the connection
    /// ends: our reply to the peer's close, or a protocol-error close.
    terminal: Option<Box<Bytes>>,
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Closing or closed.
    Closed,
    /// A volatile message over the limit: dropped for this client.
    Dropped,
    /// Over the limit: the client is being disconnected with 4008.
    SlowConsumer,
}

/// Where the connection stands, for the connection task.
pub(crate) enum Status {
    /// Killed: end now.
    Killed(CloseInfo),
    /// A close is under way: bound it in time.
    Closing,
    Open,
}

/// What ends the connection once a batch is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchEnd {
    /// A close reply or failure close: the connection ends after it.
    Terminal,
    /// Our own close: keep reading until the peer answers.
    AwaitPeer,
}

/// One frame ready for the wire: its header, and its payload shared with the queue.
pub(crate) struct Frame {
    pub(crate) header: [u8; 10],
    pub(crate) header_len: u8,
    pub(crate) payload: Bytes,
    /// Bytes of this frame counted against the limit (data only; 0 for control frames).
    pub(crate) counted: usize,
}

impl Frame {
    fn new(opcode: u8, payload: Bytes, counted: usize) -> Self {
        let (header, n) = proto::header(opcode, payload.len());
        Self {
            header,
            header_len: n as u8,
            payload,
            counted,
        }
    }
    /// Compress a data frame with `d` (RSV1 set); `None` when it goes as it is (a
    /// control frame, too small, or no smaller), else whether the compressor ran for it
    /// (not when a broadcast's compressed form was shared). `counted` stays the queued
    /// size.
    pub(crate) fn compress(&mut self, d: &mut super::deflate::Deflater) -> Option<bool> {
        let opcode = self.header[0] & 0x0f;
        if opcode != proto::OP_TEXT && opcode != proto::OP_BINARY {
            return None;
        }
        let (z, fresh) = d.compress(&self.payload);
        let z = z?;
        let (mut header, n) = proto::header(opcode, z.len());
        header[0] |= 0x40;
        self.header = header;
        self.header_len = n as u8;
        self.payload = z;
        Some(fresh)
    }

    /// Header and payload bytes.
    pub(crate) fn len(&self) -> usize {
        usize::from(self.header_len) + self.payload.len()
    }
}

/// The byte-bounded outbound queue of one connection (see the module docs).
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    waker: AtomicWaker,
    max_bytes: usize,
}

impl Outbox {
    /// An empty queue holding at most `max_bytes` of data.
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::default(),
            waker: AtomicWaker::new(),
            max_bytes,
        }
    }

    /// The data limit in bytes.
    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the state is
        // still consistent (every critical section is a few field updates).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` on the state, then wake the connection task.
    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.waker.wake();
        out
    }

    // ---- producers ----

    /// Queue a message (see the module docs for the limit's policy).
    pub(crate) fn push(&self, opcode: u8, payload: Bytes, volatile: bool) -> Result<(), Refused> {
        let mut st = self.lock();
        if st.closing || st.kill.is_some() {
            return Err(Refused::Closed);
        }
        if st.bytes + payload.len() > self.max_bytes && !st.queue.is_empty() {
            if volatile {
                return Err(Refused::Dropped);
            }
            // Slow consumer: drop what is queued and disconnect with a typed close.
            st.queue.clear();
            st.bytes = 0;
            queue_close(
                &mut st,
                CloseCode(super::SLOW_CONSUMER_CODE),
                "slow consumer",
            );
            drop(st);
            self.waker.wake();
            return Err(Refused::SlowConsumer);
        }
        st.bytes += payload.len();
        st.queue.push_back(Outbound::Data { opcode, payload });
        drop(st);
        self.waker.wake();
        Ok(())
    }

    /// Queue our close after what is queued. False when a close or kill is already
    /// under way (nothing is queued then).
    pub(crate) fn close(&self, code: CloseCode, reason: &str) -> bool {
        self.update(|st| {
            if st.closing || st.kill.is_some() {
                return false;
            }
            queue_close(st, code, reason);
            true
        })
    }

    /// End the connection at once, without a handshake; close handlers see `info`
    /// (the first kill wins).
    pub(crate) fn kill(&self, info: CloseInfo) {
        self.update(|st| {
            if st.kill.is_none() {
                st.kill = Some(Box::new(info));
            }
        });
    }

    /// Answer a ping.
    pub(crate) fn pong(&self, payload: Bytes) {
        self.update(|st| {
            if st.terminal.is_none() {
                let q = st.pongs.get_or_insert_with(Default::default);
                if q.len() >= MAX_PENDING_PONGS {
                    q.pop_front();
                }
                q.push_back(payload);
            }
        });
    }

    /// The peer sent a close: answer it (echoing its code) unless our own close is already
    /// on the wire. Our close still waiting in the queue (behind data) is replaced by the
    /// reply, which goes out at once; queued data is dropped. Returns whether a reply was
    /// queued.
    pub(crate) fn close_reply(&self, code: Option<u16>) -> bool {
        self.update(|st| {
            let already = st.close_written || st.terminal.is_some();
            st.closing = true;
            if !already {
                st.sent_close = None;
                st.queue.clear();
                st.bytes = 0;
                st.terminal = Some(Box::new(match code {
                    Some(c) => proto::close_payload(c, ""),
                    None => Bytes::new(),
                }));
            }
            !already
        })
    }

    /// The peer broke the protocol: a close with `code` goes out before anything else
    /// (replacing ours if it is still queued), and queued data is dropped. False when our
    /// close is already on the wire: no second close may follow it, so the connection
    /// just ends.
    pub(crate) fn fail(&self, code: u16, reason: &str) -> bool {
        self.update(|st| {
            st.closing = true;
            st.queue.clear();
            st.bytes = 0;
            if st.close_written {
                return false;
            }
            st.sent_close = None;
            st.terminal = Some(Box::new(proto::close_payload(
                code,
                truncate_reason(reason),
            )));
            true
        })
    }

    /// Send a ping ahead of queued data.
    pub(crate) fn ping(&self) {
        self.update(|st| st.ping = true);
    }

    /// Bytes of data queued and not yet written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Whether a close or kill is under way.
    pub(crate) fn is_closing(&self) -> bool {
        let st = self.lock();
        st.closing || st.kill.is_some()
    }

    /// The connection is over: drop queued data, and refuse more (a send racing the end
    /// cannot slip in after this).
    pub(crate) fn clear(&self) {
        let mut st = self.lock();
        st.queue = VecDeque::new();
        st.bytes = 0;
        st.closing = true;
    }

    // ---- the consumer (the connection task) ----

    /// Where the connection stands. Registers the task's waker first, so no wake-up
    /// between this look and the task's next wait is lost.
    pub(crate) fn status(&self, waker: &Waker) -> Status {
        self.waker.register(waker);
        let st = self.lock();
        match &st.kill {
            Some(info) => Status::Killed((**info).clone()),
            None if st.closing => Status::Closing,
            None => Status::Open,
        }
    }

    /// Move the next frames for the wire into `out` (at most `max` data frames), in
    /// order: a terminal close alone; else pongs, the ping, then data up to and
    /// including our close. Returns how the connection goes on once they are written.
    pub(crate) fn next_batch(&self, out: &mut Vec<Frame>, max: usize) -> Option<BatchEnd> {
        let mut st = self.lock();
        if let Some(payload) = st.terminal.take() {
            out.push(Frame::new(proto::OP_CLOSE, *payload, 0));
            return Some(BatchEnd::Terminal);
        }
        if let Some(pongs) = st.pongs.take() {
            out.extend(pongs.into_iter().map(|p| Frame::new(proto::OP_PONG, p, 0)));
        }
        if std::mem::take(&mut st.ping) {
            out.push(Frame::new(proto::OP_PING, Bytes::new(), 0));
        }
        let mut end = None;
        while out.len() < max {
            match st.queue.pop_front() {
                Some(Outbound::Data { opcode, payload }) => {
                    let n = payload.len();
                    out.push(Frame::new(opcode, payload, n));
                }
                Some(Outbound::Close(code, reason)) => {
                    out.push(Frame::new(
                        proto::OP_CLOSE,
                        proto::close_payload(code.0, &reason),
                        0,
                    ));
                    // taken for the wire: the batch in hand is always finished first
                    st.close_written = true;
                    end = Some(BatchEnd::AwaitPeer);
                    break;
                }
                None => break,
            }
        }
        if st.queue.is_empty() && st.queue.capacity() > 64 {
            // a burst is over: give the memory back
            st.queue = VecDeque::new();
        }
        end
    }

    /// `bytes` of data were written: they no longer count against the limit.
    pub(crate) fn ack(&self, bytes: usize) {
        if bytes > 0 {
            let mut st = self.lock();
            st.bytes = st.bytes.saturating_sub(bytes);
        }
    }

    /// The close we started, if any (what close handlers see when the peer echoed it).
    pub(crate) fn take_sent_close(&self) -> Option<CloseInfo> {
        self.lock().sent_close.take().map(|b| *b)
    }

    /// Queued data payloads, oldest first, removed from the queue (for tests).
    #[cfg(test)]
    pub(crate) fn drain_data(&self) -> Vec<Bytes> {
        let mut st = self.lock();
        st.bytes = 0;
        st.queue
            .drain(..)
            .filter_map(|o| match o {
                Outbound::Data { payload, .. } => Some(payload),
                Outbound::Close(..) => None,
            })
            .collect()
    }
}

/// Queue our close frame after what is queued, and remember it for the close handlers.
fn queue_close(st: &mut State, code: CloseCode, reason: &str) {
    let reason = truncate_reason(reason).to_owned();
    st.closing = true;
    st.sent_close = Some(Box::new(CloseInfo::new(code, reason.clone())));
    st.queue.push_back(Outbound::Close(code, reason));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(out: &[Frame]) -> Vec<u8> {
        out.iter().map(|f| f.header[0] & 0x0f).collect()
    }

    #[test]
    fn control_frames_go_first_and_a_terminal_close_alone() {
        let o = Outbox::new(1024);
        o.push(proto::OP_TEXT, Bytes::from_static(b"a"), false)
            .expect("queued");
        o.ping();
        o.pong(Bytes::from_static(b"p"));
        let mut out = Vec::new();
        assert_eq!(o.next_batch(&mut out, 64), None);
        assert_eq!(
            kinds(&out),
            [proto::OP_PONG, proto::OP_PING, proto::OP_TEXT]
        );
        o.push(proto::OP_TEXT, Bytes::from_static(b"b"), false)
            .expect("queued");
        o.fail(1002, "bad");
        out.clear();
        assert_eq!(o.next_batch(&mut out, 64), Some(BatchEnd::Terminal));
        assert_eq!(kinds(&out), [proto::OP_CLOSE], "queued data is dropped");
        assert_eq!(
            o.push(proto::OP_TEXT, Bytes::new(), false),
            Err(Refused::Closed)
        );
    }

    #[test]
    fn the_limit_drops_volatile_and_disconnects_a_slow_consumer() {
        let o = Outbox::new(10);
        // an empty queue takes one message of any size
        o.push(proto::OP_TEXT, Bytes::from(vec![0; 50]), false)
            .expect("first");
        assert_eq!(
            o.push(proto::OP_TEXT, Bytes::from_static(b"v"), true),
            Err(Refused::Dropped)
        );
        assert_eq!(o.queued_bytes(), 50, "a drop changes nothing");
        assert_eq!(
            o.push(proto::OP_TEXT, Bytes::from_static(b"n"), false),
            Err(Refused::SlowConsumer)
        );
        assert!(o.is_closing());
        let mut out = Vec::new();
        assert_eq!(o.next_batch(&mut out, 64), Some(BatchEnd::AwaitPeer));
        assert_eq!(kinds(&out), [proto::OP_CLOSE], "queued data dropped");
        assert_eq!(&out[0].payload[..2], &4008u16.to_be_bytes());
        assert_eq!(
            o.take_sent_close().map(|c| c.code),
            Some(CloseCode::SLOW_CONSUMER)
        );
    }

    #[test]
    fn data_before_our_close_goes_first_and_acks_free_the_budget() {
        let o = Outbox::new(100);
        for _ in 0..3 {
            o.push(proto::OP_BINARY, Bytes::from(vec![1; 30]), false)
                .expect("queued");
        }
        assert!(o.close(CloseCode::NORMAL, "bye"));
        assert!(!o.close(CloseCode::NORMAL, "again"), "one close");
        let mut out = Vec::new();
        assert_eq!(o.next_batch(&mut out, 2), None, "two data frames fit");
        assert_eq!(o.queued_bytes(), 90, "not acked yet");
        o.ack(out.iter().map(|f| f.counted).sum());
        assert_eq!(o.queued_bytes(), 30);
        out.clear();
        assert_eq!(o.next_batch(&mut out, 64), Some(BatchEnd::AwaitPeer));
        assert_eq!(kinds(&out), [proto::OP_BINARY, proto::OP_CLOSE]);
    }

    #[test]
    fn a_peer_close_or_failure_replaces_our_close_while_it_is_still_queued() {
        let o = Outbox::new(100);
        o.push(proto::OP_TEXT, Bytes::from_static(b"a"), false)
            .expect("queued");
        assert!(o.close(CloseCode::NORMAL, "bye"));
        // the peer closes first: the reply goes out alone, and ours is forgotten
        assert!(o.close_reply(Some(4000)));
        let mut out = Vec::new();
        assert_eq!(o.next_batch(&mut out, 64), Some(BatchEnd::Terminal));
        assert_eq!(kinds(&out), [proto::OP_CLOSE]);
        assert_eq!(&out[0].payload[..2], &4000u16.to_be_bytes());
        assert_eq!(o.take_sent_close(), None);

        // a failure after our close left: no second close
        let o = Outbox::new(100);
        assert!(o.close(CloseCode::GOING_AWAY, "bye"));
        let mut out = Vec::new();
        assert_eq!(o.next_batch(&mut out, 64), Some(BatchEnd::AwaitPeer));
        assert!(!o.fail(1002, "bad frame"));
        assert!(!o.close_reply(Some(1000)), "no reply after ours either");
        out.clear();
        assert_eq!(o.next_batch(&mut out, 64), None);
        assert!(out.is_empty());
        assert_eq!(
            o.take_sent_close().map(|c| c.code),
            Some(CloseCode::GOING_AWAY)
        );

        // a failure while ours is still queued: the failure's close replaces it
        let o = Outbox::new(100);
        assert!(o.close(CloseCode::GOING_AWAY, "bye"));
        assert!(o.fail(1002, "bad frame"));
        let mut out = Vec::new();
        assert_eq!(o.next_batch(&mut out, 64), Some(BatchEnd::Terminal));
        assert_eq!(&out[0].payload[..2], &1002u16.to_be_bytes());
        assert_eq!(o.take_sent_close(), None);
    }

    #[test]
    fn pongs_are_bounded_and_the_latest_kept() {
        let o = Outbox::new(100);
        for i in 0..100u8 {
            o.pong(Bytes::from(vec![i]));
        }
        let mut out = Vec::new();
        o.next_batch(&mut out, 64);
        assert_eq!(out.len(), MAX_PENDING_PONGS);
        assert_eq!(out.last().map(|f| f.payload[0]), Some(99));
    }

    #[test]
    fn a_kill_is_seen_at_once() {
        let o = Outbox::new(100);
        o.kill(CloseInfo::new(CloseCode::ABNORMAL, "reaped"));
        o.kill(CloseInfo::new(CloseCode::GOING_AWAY, "later"));
        let w = futures_util::task::noop_waker();
        assert!(matches!(o.status(&w), Status::Killed(i) if i.reason == "reaped"));
    }
}
