//! `fanout --deflate`: subscribers that offer permessage-deflate and read the server's
//! frames themselves (raw TCP, no WebSocket crate: tokio-websockets has no compression),
//! inflating compressed ones, and counting the bytes that crossed the wire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flate2::{Decompress, FlushDecompress};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Open a WebSocket at `url` offering permessage-deflate; the answer must take it.
pub(crate) async fn open(url: &str) -> Result<TcpStream, String> {
    let (host, path) = crate::sse::host_and_path(url)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    let (tcp, head) = crate::sse::request_head(&host, &request).await?;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if !head.starts_with("http/1.1 101") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    if !head.contains("sec-websocket-extensions: permessage-deflate") {
        return Err("the server did not take permessage-deflate (run it with --deflate)".into());
    }
    Ok(tcp)
}

/// Read frames until the connection ends: each text message (inflated when compressed)
/// goes to `on_message`; every byte read is added to `wire`.
pub(crate) async fn read(mut tcp: TcpStream, wire: Arc<AtomicU64>, on_message: impl Fn(&[u8])) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut inflater = Decompress::new(false);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let n = match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        wire.fetch_add(n as u64, Ordering::Relaxed);
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Some((rsv1, opcode, start, len)) = header(&buf[at..]) {
            if buf.len() < at + start + len {
                break;
            }
            let payload = &buf[at + start..at + start + len];
            if opcode == 1 {
                if rsv1 {
                    // no context takeover (the server's answer in shared mode): a fresh
                    // stream per message
                    inflater.reset(false);
                    out.clear();
                    if inflate(&mut inflater, payload, &mut out) {
                        on_message(&out);
                    }
                } else {
                    on_message(payload);
                }
            }
            at += start + len;
        }
        buf.drain(..at);
    }
}

/// A server frame's RSV1, opcode, header length and payload length, when the header is
/// there.
fn header(b: &[u8]) -> Option<(bool, u8, usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (rsv1, opcode) = (b[0] & 0x40 != 0, b[0] & 0x0f);
    match b[1] & 0x7f {
        126 => (b.len() >= 4).then(|| {
            (
                rsv1,
                opcode,
                4,
                usize::from(u16::from_be_bytes([b[2], b[3]])),
            )
        }),
        127 => {
            if b.len() < 10 {
                return None;
            }
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[2..10]);
            Some((
                rsv1,
                opcode,
                10,
                usize::try_from(u64::from_be_bytes(l)).ok()?,
            ))
        }
        n => Some((rsv1, opcode, 2, usize::from(n))),
    }
}

fn inflate(d: &mut Decompress, input: &[u8], out: &mut Vec<u8>) -> bool {
    for part in [input, &[0, 0, 0xff, 0xff][..]] {
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 4096 {
                out.reserve(out.capacity().max(4096));
            }
            let before = d.total_in();
            if d.decompress_vec(&part[pos..], out, FlushDecompress::Sync)
                .is_err()
            {
                return false;
            }
            pos += (d.total_in() - before) as usize;
            if pos >= part.len() && out.len() < out.capacity() {
                break;
            }
        }
    }
    true
}
