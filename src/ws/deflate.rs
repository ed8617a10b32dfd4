//! permessage-deflate (RFC 7692): the negotiation (pure), and the compressors and
//! decompressors behind it.
//!
//! Two modes ([`CompressionMode`]):
//! - **shared** (the default when compression is on): the server answers every offer
//!   with `server_no_context_takeover; client_no_context_takeover`, so each message is
//!   compressed on its own in both directions and no connection keeps compression state.
//!   A message's compressed form then depends only on its bytes: the first connection
//!   that writes a broadcast compresses it, and the others on the same thread find it in
//!   a small cache keyed by the shared payload (see `Deflater`), so a fan-out to N
//!   clients compresses once, not N times;
//! - **context takeover**, opt in: each connection keeps its own compressor and
//!   decompressor (a 32 KiB window each way, plus their tables; measured figures in the
//!   README), which compresses small, similar messages much better, at that memory per
//!   connection and one compression per recipient.
//!
//! Inbound, a compressed message is inflated as it is read, never beyond `max_payload`:
//! a deflate bomb is closed with 1009 after at most `max_payload` bytes of output.
//! Undecodable compressed data closes with 1007.
//!
//! Window bits: street always inflates with a 32 KiB window, which reads any smaller
//! window the client uses (`client_max_window_bits` is accepted and not narrowed). A
//! client that limits the server's window (`server_max_window_bits` below 15) gets that
//! answered and every message uncompressed (street's compressor has no smaller window;
//! RFC 7692 lets a sender leave any message uncompressed).

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::Bytes;
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use http::HeaderValue;

use super::proto::ProtoError;

/// The trailer a sync flush ends with, removed on the wire (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// How compression is negotiated (see [`Compression`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CompressionMode {
    /// No compression state per connection: each message is compressed on its own, once
    /// per broadcast for every recipient, and clients are asked to do the same
    /// (`client_no_context_takeover`). The default.
    #[default]
    Shared,
    /// A compressor and a decompressor per connection that remember earlier messages
    /// (about 300 KiB per connection with both directions on; see the README): better
    /// ratios for small similar messages, compressed once per recipient.
    ContextTakeover,
}

/// permessage-deflate settings ([`WsOptions::compression`](super::WsOptions::compression)).
///
/// ```
/// use street::ws::{Compression, CompressionMode, WsOptions};
/// let opts = WsOptions::default().with_compression(Some(
///     Compression::default().with_level(6).with_min_bytes(512),
/// ));
/// let c = opts.compression.expect("on");
/// assert_eq!((c.mode, c.level, c.min_bytes), (CompressionMode::Shared, 6, 512));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Compression {
    /// Shared (no state per connection) or per-connection context takeover. Default
    /// [`CompressionMode::Shared`].
    pub mode: CompressionMode,
    /// zlib level, 0 (store) to 9 (smallest, slowest). Default 1: most of the gain on
    /// JSON for a fraction of the CPU of higher levels.
    pub level: u32,
    /// Messages shorter than this go uncompressed (headers and the deflate block cost
    /// more than they save on tiny messages). Default 128 bytes.
    pub min_bytes: usize,
}

impl Default for Compression {
    fn default() -> Self {
        Self {
            mode: CompressionMode::Shared,
            level: 1,
            min_bytes: 128,
        }
    }
}

impl Compression {
    /// With this mode.
    #[must_use]
    pub fn with_mode(mut self, mode: CompressionMode) -> Self {
        self.mode = mode;
        self
    }

    /// With this level (clamped to 9).
    #[must_use]
    pub fn with_level(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }

    /// With this minimum size.
    #[must_use]
    pub fn with_min_bytes(mut self, min_bytes: usize) -> Self {
        self.min_bytes = min_bytes;
        self
    }
}

/// What was agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// How the server compresses what it sends.
    pub(crate) out: Out,
    /// The client keeps its context between messages: inflate with a decompressor of the
    /// connection's own.
    pub(crate) client_takeover: bool,
    pub(crate) level: u8,
    pub(crate) min_bytes: u32,
}

/// How the server compresses what it sends on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Out {
    /// Never (the client limited the server's window below what street compresses with).
    Never,
    /// Each message on its own (shared between recipients).
    Shared,
    /// With the connection's own context.
    Takeover,
}

/// One offer's parameters.
#[derive(Debug, Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
}

/// Parse one `permessage-deflate` offer's parameters; `None` when they are not valid
/// (an unknown or repeated parameter, a bad value): that offer is declined.
fn parse_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Offer> {
    let mut o = Offer::default();
    let mut seen = [false; 4];
    for p in params {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p.trim(), None),
        };
        let bits = |v: Option<&str>| -> Option<u8> {
            let b: u8 = v?.parse().ok()?;
            (8..=15).contains(&b).then_some(b)
        };
        let i = match name {
            "server_no_context_takeover" if value.is_none() => {
                o.server_no_context_takeover = true;
                0
            }
            "client_no_context_takeover" if value.is_none() => {
                o.client_no_context_takeover = true;
                1
            }
            "server_max_window_bits" => {
                o.server_max_window_bits = Some(bits(value)?);
                2
            }
            // with or without a value: street inflates with any window
            "client_max_window_bits" => {
                if value.is_some() {
                    bits(value)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[i], true) {
            return None;
        }
    }
    Some(o)
}

/// Answer the client's `Sec-WebSocket-Extensions` offers: the first acceptable
/// `permessage-deflate` offer is taken. Returns what was agreed and the response header,
/// or `None` (no compression) when nothing acceptable was offered.
pub(crate) fn negotiate<'a>(
    offers: impl Iterator<Item = &'a HeaderValue>,
    cfg: &Compression,
) -> Option<(Agreed, HeaderValue)> {
    let offers = offers
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for offer in offers {
        let mut parts = offer.split(';');
        if parts.next().map(str::trim) != Some("permessage-deflate") {
            continue;
        }
        let Some(o) = parse_offer(parts) else {
            continue;
        };
        let mut answer = String::from("permessage-deflate");
        let shared = cfg.mode == CompressionMode::Shared;
        let mut out = if shared { Out::Shared } else { Out::Takeover };
        if shared || o.server_no_context_takeover {
            answer.push_str("; server_no_context_takeover");
            if !shared {
                out = Out::Shared;
            }
        }
        if shared || o.client_no_context_takeover {
            answer.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = o.server_max_window_bits {
            answer.push_str(&format!("; server_max_window_bits={bits}"));
            if bits < 15 {
                out = Out::Never;
            }
        }
        let agreed = Agreed {
            out,
            client_takeover: !(shared || o.client_no_context_takeover),
            level: u8::try_from(cfg.level.min(9)).unwrap_or(9),
            min_bytes: u32::try_from(cfg.min_bytes).unwrap_or(u32::MAX),
        };
        return HeaderValue::from_str(&answer).ok().map(|h| (agreed, h));
    }
    None
}

/// A connection's permessage-deflate state, made at the handshake (boxed: a connection
/// without compression pays one pointer, in its task).
pub(crate) struct PerMessage {
    pub(crate) inflater: Inflater,
    pub(crate) deflater: Deflater,
}

impl PerMessage {
    pub(crate) fn new(agreed: &Agreed) -> Box<Self> {
        Box::new(Self {
            inflater: Inflater::new(agreed),
            deflater: Deflater::new(agreed),
        })
    }
}

// ---- inbound ----

thread_local! {
    /// The decompressor of connections whose client does not keep context: reset per
    /// message, one per thread.
    static FRESH_INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Inflates a connection's compressed messages (held by its decoder).
#[derive(Debug)]
pub(crate) enum Inflater {
    /// Each message on its own: the thread's decompressor, reset.
    Fresh,
    /// The client keeps its context: the connection's own decompressor.
    Takeover(Box<Decompress>),
}

impl Inflater {
    pub(crate) fn new(agreed: &Agreed) -> Self {
        if agreed.client_takeover {
            Inflater::Takeover(Box::new(Decompress::new(false)))
        } else {
            Inflater::Fresh
        }
    }

    /// Inflate one message's payload (its frames' data, the tail removed by the sender),
    /// never producing more than `max` bytes: more is [`ProtoError::TooBig`] (1009);
    /// data that does not inflate is [`ProtoError::InvalidCompressed`] (1007).
    pub(crate) fn inflate(&mut self, input: &[u8], max: usize) -> Result<Bytes, ProtoError> {
        match self {
            Inflater::Fresh => FRESH_INFLATE.with(|d| {
                let mut d = d.borrow_mut();
                d.reset(false);
                let out = inflate_with(&mut d, input, max);
                if out.is_err() {
                    // a failed stream leaves state behind: start clean next time
                    d.reset(false);
                }
                out
            }),
            Inflater::Takeover(d) => inflate_with(d, input, max),
        }
    }
}

/// Inflate `input` then the sync-flush tail with `d`, at most `max` bytes out.
pub(crate) fn inflate_with(
    d: &mut Decompress,
    input: &[u8],
    max: usize,
) -> Result<Bytes, ProtoError> {
    // start small (64 KiB at most) and grow by doubling: a message that inflates to
    // little holds little
    let start = input
        .len()
        .saturating_mul(2)
        .clamp(64, max.clamp(64, 64 * 1024));
    let mut out: Vec<u8> = Vec::with_capacity(start);
    for (tail, part) in [(false, input), (true, &TAIL[..])] {
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(ProtoError::TooBig(max));
                }
                // grow by steps, one byte past `max` at most (to see that it is exceeded)
                let room = max
                    .saturating_add(1)
                    .saturating_sub(out.len())
                    .min(out.len().max(4096));
                out.reserve_exact(room);
            }
            let (in0, out0) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(&part[pos..], &mut out, FlushDecompress::Sync)
                .map_err(|_| ProtoError::InvalidCompressed)?;
            if out.len() > max {
                return Err(ProtoError::TooBig(max));
            }
            let used = usize::try_from(d.total_in() - in0).unwrap_or(usize::MAX);
            pos += used;
            let full = out.len() == out.capacity();
            if pos >= part.len() && !full {
                break;
            }
            if status == Status::StreamEnd {
                // a final block (BFINAL): nothing of the client's may follow it in this
                // message (our tail does not count), and the stream is over (the next
                // message starts a new one, context or not)
                if pos < part.len() && !tail {
                    return Err(ProtoError::InvalidCompressed);
                }
                d.reset(false);
                return Ok(fit(out));
            }
            if used == 0 && out.len() == out0 && !full {
                return Err(ProtoError::InvalidCompressed);
            }
        }
    }
    Ok(fit(out))
}

/// `out` as `Bytes`, without holding much unused capacity (the message may be kept).
fn fit(mut out: Vec<u8>) -> Bytes {
    if out.capacity() - out.len() > 4096 {
        out.shrink_to_fit();
    }
    Bytes::from(out)
}

// ---- outbound ----

/// How many recent compressed messages each thread keeps for the shared mode.
const CACHE_ENTRIES: usize = 32;
/// Most bytes (raw plus compressed) those entries may hold per thread.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// The shared mode's per-thread compressor and its cache of recent results.
struct SharedDeflate {
    level: u8,
    compress: Compress,
    /// `(payload, level, compressed)`: the payload is kept, so its address cannot be
    /// reused by another message while it is a key here.
    cache: VecDeque<(Bytes, u8, Option<Bytes>)>,
    bytes: usize,
}

thread_local! {
    static SHARED_DEFLATE: RefCell<Option<SharedDeflate>> = const { RefCell::new(None) };
}

/// Whether `a` and `b` are the same bytes in memory (clones of one payload).
fn same(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

/// Compresses what a connection sends.
pub(crate) enum Deflater {
    Never,
    Shared { level: u8, min: u32 },
    Takeover { compress: Box<Compress>, min: u32 },
}

impl Deflater {
    pub(crate) fn new(agreed: &Agreed) -> Self {
        match agreed.out {
            Out::Never => Deflater::Never,
            Out::Shared => Deflater::Shared {
                level: agreed.level,
                min: agreed.min_bytes,
            },
            Out::Takeover => Deflater::Takeover {
                compress: Box::new(Compress::new(
                    flate2::Compression::new(u32::from(agreed.level)),
                    false,
                )),
                min: agreed.min_bytes,
            },
        }
    }

    /// The compressed form of `payload` to send with RSV1, or `None` to send it as it
    /// is (too small, or no smaller compressed in the shared mode); and whether the
    /// compressor ran for it (not when the shared cache had it).
    pub(crate) fn compress(&mut self, payload: &Bytes) -> (Option<Bytes>, bool) {
        match self {
            Deflater::Never => (None, false),
            Deflater::Shared { level, min } => {
                if payload.len() < *min as usize || payload.is_empty() {
                    return (None, false);
                }
                shared_compress(payload, *level)
            }
            Deflater::Takeover { compress, min } => {
                if payload.len() < *min as usize || payload.is_empty() {
                    return (None, false);
                }
                // with context: once compressed it must be sent compressed (the client's
                // window holds it from now on). Should compressing fail, the message goes
                // uncompressed and the compressor starts over: an empty window refers to
                // nothing the client lacks
                match deflate_with(compress, payload) {
                    Ok(z) => (Some(z), true),
                    Err(_) => {
                        compress.reset();
                        (None, false)
                    }
                }
            }
        }
    }
}

/// Compress `payload` on its own at `level`, or find it compressed already on this
/// thread. `None` when compressing does not make it smaller; `true` when it was
/// compressed now.
fn shared_compress(payload: &Bytes, level: u8) -> (Option<Bytes>, bool) {
    SHARED_DEFLATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let st = match &mut *cell {
            Some(st) if st.level == level => st,
            slot => slot.insert(SharedDeflate {
                level,
                compress: Compress::new(flate2::Compression::new(u32::from(level)), false),
                cache: VecDeque::new(),
                bytes: 0,
            }),
        };
        if let Some((_, _, out)) = st
            .cache
            .iter()
            .find(|(p, l, _)| *l == level && same(p, payload))
        {
            return (out.clone(), false);
        }
        st.compress.reset();
        let out = deflate_with(&mut st.compress, payload)
            .ok()
            .filter(|c| c.len() < payload.len());
        let size = payload.len() + out.as_ref().map_or(0, Bytes::len);
        if size <= CACHE_BYTES / 4 {
            while st.cache.len() >= CACHE_ENTRIES || st.bytes + size > CACHE_BYTES {
                let Some((p, _, o)) = st.cache.pop_front() else {
                    break;
                };
                st.bytes -= p.len() + o.as_ref().map_or(0, Bytes::len);
            }
            st.bytes += size;
            st.cache.push_back((payload.clone(), level, out.clone()));
        }
        (out, true)
    })
}

/// Compress `input` with `c` and a sync flush, the tail removed: called again with the
/// same flush while it fills the output (zlib's contract; the zlib-rs backend keeps it,
/// where miniz_oxide's level 1 lost the end of some messages).
pub(crate) fn deflate_with(c: &mut Compress, input: &[u8]) -> Result<Bytes, flate2::CompressError> {
    let mut out: Vec<u8> = Vec::with_capacity(input.len() / 2 + 64);
    let mut pos = 0;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(256));
        }
        let in0 = c.total_in();
        c.compress_vec(&input[pos..], &mut out, FlushCompress::Sync)?;
        pos += usize::try_from(c.total_in() - in0).unwrap_or(usize::MAX);
        // done when all input is in and the flush fit in the room left
        if pos >= input.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(s: &'static str, cfg: &Compression) -> Option<(Agreed, String)> {
        let v = HeaderValue::from_static(s);
        negotiate(std::iter::once(&v), cfg).map(|(a, h)| (a, h.to_str().expect("ascii").to_owned()))
    }

    #[test]
    fn the_shared_mode_answers_every_offer_without_context_takeover() {
        let cfg = Compression::default();
        let (a, h) = offer("permessage-deflate; client_max_window_bits", &cfg).expect("on");
        assert_eq!(
            h,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!((a.out, a.client_takeover), (Out::Shared, false));
        // a limit on the server's window is answered, and nothing is compressed
        let (a, h) = offer("permessage-deflate; server_max_window_bits=10", &cfg).expect("on");
        assert!(h.ends_with("; server_max_window_bits=10"), "{h}");
        assert_eq!(a.out, Out::Never);
        // invalid offers are declined, the next acceptable one is taken
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; nope",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "x-webkit-deflate-frame",
        ] {
            assert!(offer(bad, &cfg).is_none(), "{bad}");
        }
        let (_, h) = offer(
            "permessage-deflate; server_max_window_bits=99, permessage-deflate",
            &cfg,
        )
        .expect("the second");
        assert!(!h.contains("window"), "{h}");
    }

    #[test]
    fn context_takeover_is_kept_unless_the_client_asks_otherwise() {
        let cfg = Compression::default().with_mode(CompressionMode::ContextTakeover);
        let (a, h) = offer("permessage-deflate; client_max_window_bits", &cfg).expect("on");
        assert_eq!(h, "permessage-deflate");
        assert_eq!((a.out, a.client_takeover), (Out::Takeover, true));
        let (a, h) = offer(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            &cfg,
        )
        .expect("on");
        assert_eq!(
            h,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!((a.out, a.client_takeover), (Out::Shared, false));
    }

    #[test]
    fn what_is_deflated_inflates_back_in_both_modes() {
        let msg = Bytes::from(
            r#"{"type":"chat","payload":{"text":"hello hello hello hello"},"ts":1}"#.repeat(20),
        );
        // shared: the same bytes give the same compressed frame, found in the cache
        let (z, fresh) = shared_compress(&msg, 1);
        let z = z.expect("smaller");
        assert!(
            fresh && z.len() < msg.len() / 4,
            "{} of {}",
            z.len(),
            msg.len()
        );
        let (again, fresh) = shared_compress(&msg, 1);
        let again = again.expect("cached");
        assert!(
            !fresh && std::ptr::eq(z.as_ptr(), again.as_ptr()),
            "compressed once"
        );
        let back = Inflater::Fresh.inflate(&z, 1 << 20).expect("inflates");
        assert_eq!(back, msg);
        // takeover: the second message refers to the first
        let agreed = Agreed {
            out: Out::Takeover,
            client_takeover: true,
            level: 6,
            min_bytes: 0,
        };
        let (mut d, mut i) = (Deflater::new(&agreed), Inflater::new(&agreed));
        let a = d.compress(&msg).0.expect("a");
        let b = d.compress(&msg).0.expect("b");
        assert!(
            b.len() < a.len(),
            "context helps: {} vs {}",
            b.len(),
            a.len()
        );
        assert_eq!(i.inflate(&a, 1 << 20).expect("a"), msg);
        assert_eq!(i.inflate(&b, 1 << 20).expect("b"), msg);
    }

    #[test]
    fn a_message_ending_with_a_final_block_inflates() {
        // what a compressor's finish (not a sync flush) makes: BFINAL set, no tail
        let mut w = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        std::io::Write::write_all(&mut w, b"final block, final answer").expect("w");
        let z = w.finish().expect("finish");
        let mut i = Inflater::Takeover(Box::new(Decompress::new(false)));
        for _ in 0..2 {
            let back = i.inflate(&z, 1024).expect("inflates");
            assert_eq!(&back[..], b"final block, final answer");
        }
        assert_eq!(
            Inflater::Fresh.inflate(&[&z[..], b"x"].concat(), 1024),
            Err(ProtoError::InvalidCompressed),
            "nothing after the final block"
        );
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_limit_and_garbage_is_refused() {
        let bomb = {
            let mut c = Compress::new(flate2::Compression::new(9), false);
            deflate_with(&mut c, &vec![0u8; 10 << 20]).expect("deflate")
        };
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert_eq!(
            Inflater::Fresh.inflate(&bomb, 64 * 1024),
            Err(ProtoError::TooBig(64 * 1024))
        );
        assert_eq!(
            Inflater::Fresh.inflate(&[0xff, 0xff, 0xff, 0x00], 1024),
            Err(ProtoError::InvalidCompressed)
        );
        // the thread's decompressor is clean again afterwards
        let z = shared_compress(&Bytes::from_static(&[b'a'; 300]), 1)
            .0
            .expect("z");
        assert_eq!(Inflater::Fresh.inflate(&z, 1024).expect("ok").len(), 300);
    }
}

#[cfg(test)]
mod big {
    use super::*;

    #[test]
    fn big_messages_round_trip() {
        let mut rng = fastrand::Rng::with_seed(7);
        for size in [65536usize, 131072, 1 << 20, 65535, 70000] {
            let words = ["hello ", "world ", "street ", "deflate ", "{\"a\":1} "];
            let mut v = Vec::new();
            while v.len() < size {
                if size == 1 << 20 || rng.u8(..) < 40 {
                    v.push(rng.u8(..));
                } else {
                    v.extend_from_slice(words[rng.usize(..words.len())].as_bytes());
                }
            }
            v.truncate(size);
            let msg = Bytes::from(v);
            let mut c = Compress::new(flate2::Compression::new(1), false);
            let z = deflate_with(&mut c, &msg).expect("z");
            let mut d = Decompress::new(false);
            let back = inflate_with(&mut d, &z, 16 << 20).expect("back");
            assert_eq!(back.len(), msg.len(), "ours->ours {size}");
            // a reference compressor (flate2's writer with a sync flush)
            let mut w = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
            std::io::Write::write_all(&mut w, &msg).expect("w");
            std::io::Write::flush(&mut w).expect("flush");
            let mut r = w.get_ref().clone();
            assert!(r.ends_with(&TAIL));
            r.truncate(r.len() - 4);
            let mut d = Decompress::new(false);
            let back = inflate_with(&mut d, &r, 16 << 20).expect("back");
            assert_eq!(back.len(), msg.len(), "ref->ours {size}");
            // ours -> reference
            let mut z2 = z.to_vec();
            z2.extend_from_slice(&TAIL);
            let mut out = Vec::new();
            let mut rd = flate2::read::DeflateDecoder::new(&z2[..]);
            let _ = std::io::Read::read_to_end(&mut rd, &mut out);
            assert_eq!(out.len(), msg.len(), "ours->ref {size}");
        }
    }
}
