//! RFC 6455 framing for the server side, with no I/O: a [`Decoder`] that turns client
//! bytes into [`Event`]s and [`header`] for outgoing frames.
//!
//! Why street has its own framing instead of a crate's `WebSocketStream`: an idle
//! connection must cost almost nothing. Stream types keep a read buffer per connection
//! (tokio-websockets, via tokio-util's `FramedRead`, allocates 8 KiB up front). Here the
//! connection task reads into a per-thread scratch buffer and only keeps bytes of a frame
//! that has not fully arrived, so an idle socket holds no buffer at all (see
//! `connection.rs`).
//!
//! What the decoder enforces (each violation is an error with its close code):
//! - client frames must be masked; RSV bits must be 0, except RSV1 on the first frame of
//!   a data message when permessage-deflate was agreed (the message is compressed);
//!   opcodes 3–7 and 11–15 are reserved → 1002;
//! - control frames must not be fragmented and carry at most 125 bytes → 1002;
//! - a continuation needs a message in progress, a new data frame must not interrupt one
//!   → 1002;
//! - a message over `max_payload` → 1009, decided from the frame header, before its
//!   payload is buffered;
//! - text must be UTF-8; fragmented text is checked as it arrives (fail fast) → 1007;
//! - a close frame's payload is empty or a valid code plus a UTF-8 reason → 1002/1007;
//! - a compressed message inflates to at most `max_payload` bytes (checked as it
//!   inflates: a deflate bomb costs no memory) → 1009, and must inflate → 1007.

use bytes::{Buf, Bytes, BytesMut};

use super::deflate::Inflater;
use super::text::Text;

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// A complete unit from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A complete text message, checked to be UTF-8 here (a fragmented one also as it
    /// arrived, to fail fast).
    Text(Text),
    /// A binary message.
    Binary(Bytes),
    /// A ping (answer with a pong carrying the same payload).
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame: `None` when it carried no status code.
    Close(Option<(u16, String)>),
    /// A non-final frame of a fragmented message was taken in (the message comes with its
    /// last frame). Reported so every frame a client sends passes the rate limits: an
    /// endless stream of empty continuation frames is not free.
    Fragment,
}

/// A violation of the protocol by the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtoError {
    #[error("{0}")]
    Protocol(&'static str),
    #[error("invalid UTF-8 in text")]
    InvalidUtf8,
    #[error("max length: {0}")]
    TooBig(usize),
    #[error("invalid compressed data")]
    InvalidCompressed,
}

impl ProtoError {
    /// The close code to send for this error.
    pub(crate) fn close_code(&self) -> u16 {
        match self {
            Self::Protocol(_) => 1002,
            Self::InvalidUtf8 | Self::InvalidCompressed => 1007,
            Self::TooBig(_) => 1009,
        }
    }
}

#[derive(Debug)]
struct Partial {
    text: bool,
    /// Compressed (RSV1 on its first frame): inflated, and checked, once whole.
    compressed: bool,
    buf: BytesMut,
    /// Bytes of `buf` known to be valid UTF-8 (a sequence may be split across frames).
    checked: usize,
}

/// Decodes client frames and assembles messages.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// `u32` keeps the decoder (in every idle connection) small; larger limits are clamped.
    max_payload: u32,
    /// The size on the wire of the last message returned when it came compressed, else 0
    /// (in the padding beside `max_payload`: free).
    compressed_len: u32,
    /// A fragmented message in progress (boxed: rare, and idle decoders stay small).
    partial: Option<Box<Partial>>,
}

/// Close codes a peer may send (RFC 6455 §7.4.1 plus the IANA registry's 1012–1014).
pub(crate) fn valid_received_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A complete text message.
fn text(bytes: Bytes) -> Result<Event, ProtoError> {
    Text::from_utf8(bytes)
        .map(Event::Text)
        .map_err(|_| ProtoError::InvalidUtf8)
}

fn check_utf8(p: &mut Partial, fin: bool) -> Result<(), ProtoError> {
    if !p.text || p.compressed {
        return Ok(());
    }
    match std::str::from_utf8(&p.buf[p.checked..]) {
        Ok(_) => {
            p.checked = p.buf.len();
            Ok(())
        }
        // an incomplete sequence at the end is fine until the last fragment
        Err(e) if e.error_len().is_none() && !fin => {
            p.checked += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(ProtoError::InvalidUtf8),
    }
}

/// XOR the payload with the 4-byte mask, eight bytes at a time.
pub(crate) fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let m8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let v = u64::from_ne_bytes(w) ^ m8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

impl Decoder {
    pub(crate) fn new(max_payload: usize) -> Self {
        Self {
            max_payload: u32::try_from(max_payload).unwrap_or(u32::MAX),
            compressed_len: 0,
            partial: None,
        }
    }

    /// The size on the wire of the last message [`decode`](Self::decode) returned, when it
    /// came compressed (0 otherwise): what the byte rate limit charges besides its
    /// inflated size, so that compressed data that inflates to little is not free.
    pub(crate) fn compressed_len(&self) -> usize {
        self.compressed_len as usize
    }

    /// A complete data message: inflated first when it came compressed.
    fn message(
        &mut self,
        inflate: Option<&mut Inflater>,
        text: bool,
        compressed: bool,
        bytes: Bytes,
    ) -> Result<Event, ProtoError> {
        self.compressed_len = 0;
        let bytes = match (compressed, inflate) {
            (true, Some(inf)) => {
                // within max_payload (checked per frame), so it fits
                self.compressed_len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                inf.inflate(&bytes, self.max_payload as usize)?
            }
            _ => bytes,
        };
        if text {
            self::text(bytes)
        } else {
            Ok(Event::Binary(bytes))
        }
    }

    pub(crate) fn max_payload(&self) -> usize {
        self.max_payload as usize
    }

    /// Bytes the decoder still needs before `src` holds a whole frame (a hint for how
    /// much to reserve), or 0 when unknown.
    ///
    /// `inflate`: the connection agreed on permessage-deflate (RSV1 on a data message's
    /// first frame marks it compressed, and it inflates with this).
    pub(crate) fn decode(
        &mut self,
        src: &mut BytesMut,
        inflate: Option<&mut Inflater>,
    ) -> Result<Option<Event>, ProtoError> {
        if src.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (src[0], src[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        // RSV1: a compressed message, on its first frame only, when deflate was agreed
        let compressed =
            b0 & 0x40 != 0 && inflate.is_some() && (opcode == OP_TEXT || opcode == OP_BINARY);
        if b0 & 0x70 != 0 && !(compressed && b0 & 0x30 == 0) {
            return Err(ProtoError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(ProtoError::Protocol("client frame not masked"));
        }
        let control = opcode & 0x08 != 0;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(ProtoError::Protocol("reserved opcode")),
        }
        let len7 = b1 & 0x7f;
        if control && !fin {
            return Err(ProtoError::Protocol("fragmented control frame"));
        }
        if control && len7 > 125 {
            return Err(ProtoError::Protocol("control frame longer than 125 bytes"));
        }
        if opcode == OP_CONTINUATION && self.partial.is_none() {
            return Err(ProtoError::Protocol("continuation frame without a message"));
        }
        if (opcode == OP_TEXT || opcode == OP_BINARY) && self.partial.is_some() {
            return Err(ProtoError::Protocol(
                "new message inside a fragmented message",
            ));
        }
        let (len_bytes, len) = match len7 {
            126 => {
                if src.len() < 4 {
                    return Ok(None);
                }
                (2, u64::from(u16::from_be_bytes([src[2], src[3]])))
            }
            127 => {
                if src.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&src[2..10]);
                let n = u64::from_be_bytes(b);
                if n >> 63 != 0 {
                    return Err(ProtoError::Protocol("frame length has the high bit set"));
                }
                (8, n)
            }
            n => (0, u64::from(n)),
        };
        let so_far = self.partial.as_ref().map_or(0, |p| p.buf.len());
        let len = match usize::try_from(len) {
            Ok(l) if !control && so_far.saturating_add(l) > self.max_payload() => {
                return Err(ProtoError::TooBig(self.max_payload()))
            }
            Ok(l) => l,
            Err(_) => return Err(ProtoError::TooBig(self.max_payload())),
        };
        let header = 2 + len_bytes + 4;
        if src.len() < header + len {
            src.reserve(header + len - src.len());
            return Ok(None);
        }
        let mask = [
            src[header - 4],
            src[header - 3],
            src[header - 2],
            src[header - 1],
        ];
        src.advance(header);
        let mut payload = src.split_to(len);
        unmask(&mut payload, mask);

        match opcode {
            OP_PING => Ok(Some(Event::Ping(payload.freeze()))),
            OP_PONG => Ok(Some(Event::Pong(payload.freeze()))),
            OP_CLOSE => close_event(&payload).map(Some),
            OP_TEXT | OP_BINARY if fin => self
                .message(inflate, opcode == OP_TEXT, compressed, payload.freeze())
                .map(Some),
            OP_TEXT | OP_BINARY => {
                let mut p = Box::new(Partial {
                    text: opcode == OP_TEXT,
                    compressed,
                    buf: payload,
                    checked: 0,
                });
                check_utf8(&mut p, false)?;
                self.partial = Some(p);
                Ok(Some(Event::Fragment))
            }
            _ => {
                // continuation (checked above that a message is in progress)
                let Some(mut p) = self.partial.take() else {
                    return Err(ProtoError::Protocol("continuation frame without a message"));
                };
                p.buf.extend_from_slice(&payload);
                check_utf8(&mut p, fin)?;
                if fin {
                    let p = *p;
                    // text is checked as it arrived (to fail fast), and once more whole:
                    // a `Text` is only made by checking, and this crate has no `unsafe`
                    return self
                        .message(inflate, p.text, p.compressed, p.buf.freeze())
                        .map(Some);
                }
                self.partial = Some(p);
                Ok(Some(Event::Fragment))
            }
        }
    }
}

fn close_event(payload: &[u8]) -> Result<Event, ProtoError> {
    match payload.len() {
        0 => Ok(Event::Close(None)),
        1 => Err(ProtoError::Protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !valid_received_close_code(code) {
                return Err(ProtoError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| ProtoError::InvalidUtf8)?;
            Ok(Event::Close(Some((code, reason.to_owned()))))
        }
    }
}

/// The header of an unmasked server frame: up to 10 bytes, and how many are used.
pub(crate) fn header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(l) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&l.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// The payload of a close frame we send.
pub(crate) fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut v = Vec::with_capacity(2 + reason.len());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(reason.as_bytes());
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with the fixed key 1,2,3,4.
    fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        masked(fin, op, payload, [1, 2, 3, 4])
    }

    /// A masked client frame.
    pub(super) fn masked(fin: bool, op: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | op];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    fn decode_all(bytes: &[u8], max: usize) -> Vec<Result<Event, ProtoError>> {
        let mut d = Decoder::new(max);
        let mut src = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut src, None) {
                Ok(Some(Event::Fragment)) => {}
                Ok(Some(e)) => out.push(Ok(e)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    #[test]
    fn single_and_fragmented_messages() {
        let mut b = frame(true, OP_TEXT, b"hello");
        b.extend(frame(false, OP_TEXT, b"he"));
        b.extend(frame(true, OP_PING, b"p"));
        b.extend(frame(false, OP_CONTINUATION, b"ll"));
        b.extend(frame(true, OP_CONTINUATION, b"o"));
        b.extend(frame(true, OP_BINARY, &[0, 1, 2]));
        b.extend(frame(true, OP_CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']));
        let ev = decode_all(&b, 1024);
        assert_eq!(
            ev,
            vec![
                Ok(Event::Text(Text::from("hello"))),
                Ok(Event::Ping(Bytes::from_static(b"p"))),
                Ok(Event::Text(Text::from("hello"))),
                Ok(Event::Binary(Bytes::from_static(&[0, 1, 2]))),
                Ok(Event::Close(Some((1000, "bye".into())))),
            ]
        );
    }

    #[test]
    fn partial_input_waits_for_more_at_every_split() {
        let mut whole = frame(true, OP_TEXT, &[b'a'; 300]);
        whole.extend(frame(true, OP_BINARY, &[7u8; 70_000]));
        for cut in [
            1,
            2,
            3,
            4,
            5,
            8,
            9,
            100,
            305,
            306,
            310,
            2000,
            whole.len() - 1,
        ] {
            let mut d = Decoder::new(1 << 20);
            let mut src = BytesMut::from(&whole[..cut]);
            let mut got = Vec::new();
            while let Ok(Some(e)) = d.decode(&mut src, None) {
                got.push(e);
            }
            src.extend_from_slice(&whole[cut..]);
            while let Ok(Some(e)) = d.decode(&mut src, None) {
                got.push(e);
            }
            got.retain(|e| *e != Event::Fragment);
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert!(src.is_empty());
        }
    }

    #[test]
    fn violations_map_to_close_codes() {
        let code = |b: Vec<u8>, max| match decode_all(&b, max).pop() {
            Some(Err(e)) => e.close_code(),
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(code(frame(true, OP_TEXT, &[b'a'; 11]), 10), 1009);
        let mut f = frame(false, OP_TEXT, &[b'a'; 6]);
        f.extend(frame(true, OP_CONTINUATION, &[b'a'; 6]));
        assert_eq!(code(f, 10), 1009);
        // the header alone is enough to refuse an oversized frame
        assert_eq!(
            code(frame(true, OP_BINARY, &[0; 100])[..4].to_vec(), 10),
            1009
        );
        assert_eq!(code(frame(true, 3, b""), 10), 1002);
        assert_eq!(code(frame(false, OP_PING, b""), 10), 1002);
        assert_eq!(code(frame(true, OP_PING, &[0; 126]), 1000), 1002);
        assert_eq!(code(frame(true, OP_CONTINUATION, b"x"), 10), 1002);
        let mut f = frame(false, OP_TEXT, b"a");
        f.extend(frame(true, OP_TEXT, b"b"));
        assert_eq!(code(f, 10), 1002);
        let mut unmasked = frame(true, OP_TEXT, b"a");
        unmasked[1] &= 0x7f;
        assert_eq!(code(unmasked, 10), 1002);
        let mut rsv = frame(true, OP_TEXT, b"a");
        rsv[0] |= 0x20;
        assert_eq!(code(rsv, 10), 1002);
        assert_eq!(code(frame(true, OP_CLOSE, &[3]), 10), 1002);
        assert_eq!(code(frame(true, OP_CLOSE, &[0x03, 0xed]), 10), 1002); // 1005
        assert_eq!(code(frame(true, OP_CLOSE, &[0x03, 0xe8, 0xff]), 10), 1007);
        // fragmented text fails fast on invalid UTF-8
        assert_eq!(code(frame(false, OP_TEXT, &[0xff]), 10), 1007);
        let mut f = frame(false, OP_TEXT, &[0xce]); // first byte of a 2-byte sequence: fine so far
        f.extend(frame(true, OP_CONTINUATION, &[0xbb]));
        assert_eq!(decode_all(&f, 10), vec![Ok(Event::Text(Text::from("λ")))]);
        let mut f = frame(false, OP_TEXT, &[0xce]);
        f.extend(frame(true, OP_CONTINUATION, b""));
        assert_eq!(code(f, 10), 1007);
    }

    #[test]
    fn headers_and_unmask() {
        assert_eq!(header(OP_TEXT, 5).1, 2);
        assert_eq!(header(OP_TEXT, 126).1, 4);
        assert_eq!(header(OP_TEXT, 70_000).1, 10);
        let mut b: Vec<u8> = (0..23).collect();
        unmask(&mut b, [9, 8, 7, 6]);
        unmask(&mut b, [9, 8, 7, 6]);
        assert_eq!(b, (0..23).collect::<Vec<u8>>());
    }
}

#[cfg(test)]
mod properties {
    use super::tests::masked;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the decoder; they give events, "need more", or an
        /// error with a close code.
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048), max in 0usize..4096) {
            let mut d = Decoder::new(max);
            let mut src = BytesMut::from(&bytes[..]);
            for _ in 0..64 {
                match d.decode(&mut src, None) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(e) => { prop_assert!(matches!(e.close_code(), 1002 | 1007 | 1009)); break; }
                }
            }
        }

        /// Any message, split into any fragments and fed in any chunks, comes out whole.
        #[test]
        fn fragmented_messages_roundtrip(
            text in ".{0,300}",
            binary in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(1usize..50, 0..6),
            chunk in 1usize..97,
            key in any::<[u8; 4]>(),
        ) {
            let mut wire = Vec::new();
            for (op, data) in [(OP_TEXT, text.as_bytes().to_vec()), (OP_BINARY, binary.clone())] {
                // split `data` at the cut points into fragments
                let mut pieces = Vec::new();
                let mut rest = &data[..];
                for c in &cuts {
                    if rest.len() > *c {
                        pieces.push(&rest[..*c]);
                        rest = &rest[*c..];
                    }
                }
                pieces.push(rest);
                let n = pieces.len();
                for (i, p) in pieces.iter().enumerate() {
                    let opcode = if i == 0 { op } else { OP_CONTINUATION };
                    wire.extend(masked(i == n - 1, opcode, p, key));
                    if i == 0 && n > 1 {
                        // a control frame in the middle of a fragmented message is allowed
                        wire.extend(masked(true, OP_PING, b"p", key));
                    }
                }
            }
            let mut d = Decoder::new(1 << 20);
            let mut src = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                src.extend_from_slice(piece);
                while let Some(ev) = d.decode(&mut src, None).map_err(|e| TestCaseError::fail(e.to_string()))? {
                    if !matches!(ev, Event::Ping(_) | Event::Fragment) {
                        got.push(ev);
                    }
                }
            }
            prop_assert_eq!(got, vec![Event::Text(Text::from(text)), Event::Binary(Bytes::from(binary))]);
        }
    }
}
