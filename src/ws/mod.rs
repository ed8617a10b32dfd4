//! The bounded WebSocket server.
//!
//! - [`server`]: [`WebSocketServer`] and [`WsOptions`] (capacity, heartbeat, limits, gates,
//!   broadcast, shutdown);
//! - [`socket`]: the per-connection [`Socket`] with its typed event API;
//! - [`envelope`]: the `{type, payload, ts}` wire codec (no I/O);
//! - [`heartbeat`](self#heartbeat): one sweep per server reaps dead peers;
//! - `upgrade` and `connection`: the handshake gates and the per-connection task.

pub mod ack;
mod close;
#[cfg(test)]
mod conn_tests;
mod connection;
mod deflate;
mod dispatch;
pub mod envelope;
mod handler;
mod heartbeat;
pub(crate) mod limits;
mod listeners;
mod origin;
mod outbox;
mod proto;
pub mod server;
pub mod socket;
pub(crate) mod stats;
mod text;
mod transport;
mod upgrade;

pub use ack::{AckError, Responder};
pub use close::{CloseCode, CloseInfo, MAX_REASON_BYTES};
pub use deflate::{Compression, CompressionMode};
pub use envelope::{Envelope, EnvelopeError};
pub use handler::{Awaited, Handler, Handler2, Inline, Outcome};
pub use heartbeat::PING_EVENT;
pub use origin::Origin;
pub use server::{
    AuthRejection, CapacityPolicy, Frames, WebSocketServer, WsOptions, SLOW_CONSUMER_CODE,
};
pub use socket::{
    ErrorEvent, ListenerId, RawMessage, Socket, SocketError, SocketId, EXPIRED_EVENT,
};
pub use stats::StatsSnapshot;
pub use text::Text;
pub use upgrade::ConnectRequest;

/// Entry points for the fuzz targets in `fuzz/` (not a stable API).
#[doc(hidden)]
pub mod __fuzz {
    use bytes::BytesMut;

    /// Decode arbitrary client bytes, whole and in 7-byte chunks. Must never panic.
    pub fn frames(data: &[u8]) {
        for max in [125usize, 70_000] {
            let mut d = super::proto::Decoder::new(max);
            let mut src = BytesMut::from(data);
            while let Ok(Some(_)) = d.decode(&mut src, None) {}
            let mut d = super::proto::Decoder::new(max);
            let mut src = BytesMut::new();
            'outer: for chunk in data.chunks(7) {
                src.extend_from_slice(chunk);
                loop {
                    match d.decode(&mut src, None) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
        }
    }

    /// permessage-deflate on arbitrary bytes: inflated (bounded, as a client's message
    /// is), decoded as frames of a connection that agreed on compression, and compressed
    /// then inflated back (which must give `data` again). Must never panic.
    pub fn deflate(data: &[u8]) {
        use super::deflate::{Agreed, Deflater, Inflater, Out};
        const MAX: usize = 64 * 1024;
        if let Ok(out) = Inflater::Fresh.inflate(data, MAX) {
            assert!(out.len() <= MAX, "inflated past the limit");
        }
        for takeover in [false, true] {
            let agreed = Agreed {
                out: if takeover { Out::Takeover } else { Out::Shared },
                client_takeover: takeover,
                level: 1,
                min_bytes: 0,
            };
            let mut d = super::proto::Decoder::new(MAX);
            let mut inflater = Inflater::new(&agreed);
            let mut src = BytesMut::from(data);
            while let Ok(Some(_)) = d.decode(&mut src, Some(&mut inflater)) {}
            let (mut z, mut i) = (Deflater::new(&agreed), Inflater::new(&agreed));
            let payload = bytes::Bytes::copy_from_slice(data);
            if let (Some(c), _) = z.compress(&payload) {
                let back = i.inflate(&c, data.len().max(1));
                assert_eq!(back.as_deref(), Ok(data), "round trip");
            }
        }
    }

    /// Treat `data` as a request head (`METHOD URI` line, then `name: value` lines) and run
    /// every check street applies before an upgrade, the client-address resolution behind
    /// trusted proxies, and (the same bytes) the PROXY protocol decoder. Must never panic.
    pub fn upgrade_request(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let mut lines = text.split("\r\n");
        let first = lines.next().unwrap_or("");
        let mut parts = first.split(' ');
        let method = http::Method::from_bytes(parts.next().unwrap_or("").as_bytes())
            .unwrap_or(http::Method::GET);
        let uri: http::Uri = parts.next().unwrap_or("/").parse().unwrap_or_default();
        let mut headers = http::HeaderMap::new();
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.trim().as_bytes()),
                    http::HeaderValue::from_str(v.trim()),
                ) {
                    headers.append(k, v);
                }
            }
        }
        super::upgrade::check_for_fuzz(&method, &headers);
        let allowed = [super::Origin::parse("https://app.example.com")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        for list in [&allowed[..], &[][..]] {
            let _ = super::origin::check(
                headers.get(http::header::ORIGIN),
                headers.get(http::header::HOST),
                list,
            );
        }
        // the same bytes as a PROXY protocol header, and the headers through the
        // trusted-proxy resolution (a proxy on loopback)
        crate::net::proxy_protocol::check_for_fuzz(data);
        if let Ok(trusted) = crate::net::TrustedProxies::parse(["127.0.0.0/8", "::1"]) {
            let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
            let _ = trusted.client_addr(peer, &headers);
        }
        let req = super::ConnectRequest::new(
            method,
            uri,
            headers,
            None,
            Vec::new(),
            http::Extensions::new(),
        );
        let _ = req.query_param("token");
    }
}

/// The header of an unmasked server frame (for benchmarks; not a stable API).
#[doc(hidden)]
pub fn __frame_header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    proto::header(opcode, len)
}
