//! The PROXY protocol (HAProxy's v1 text and v2 binary headers): a load balancer that
//! terminates TCP (HAProxy, AWS NLB, …) names the client in a header before the first
//! byte of HTTP.
//!
//! [`decode`] is a pure codec over the bytes received so far; [`read_header`] reads one
//! header off a fresh connection, consuming exactly its bytes, under a deadline.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature.
const SIG_V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 prefix.
const PREFIX_V1: &[u8; 6] = b"PROXY ";
/// The longest v1 line (the spec's 107 bytes, CRLF included).
const MAX_V1: usize = 107;
/// The longest v2 header street accepts: 16 fixed bytes and the addresses, with room for
/// the TLVs load balancers add (AWS: the VPC endpoint id; TLS details).
pub(crate) const MAX_V2: usize = 16 + 1024;

/// What the bytes received so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A header starts but is not complete; `total` is its length when known already.
    Incomplete {
        /// The header's total length (v2, once its fixed part arrived).
        total: Option<usize>,
    },
    /// A complete header of `len` bytes naming `source` (`None`: a health check from the
    /// proxy itself — v2 `LOCAL`, v1 `UNKNOWN`, or a non-IP family).
    Header {
        /// Bytes the header takes.
        len: usize,
        /// The client's address.
        source: Option<SocketAddr>,
    },
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProxyHeaderError {
    /// The connection does not start with a PROXY header.
    #[error("no PROXY protocol header")]
    Missing,
    /// The header is malformed.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// The header is longer than street accepts.
    #[error("PROXY protocol header too long")]
    TooLong,
    /// The header did not arrive in time, or the connection ended before it.
    #[error("PROXY protocol header not received")]
    NotReceived,
}

/// Decode a PROXY header at the start of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Result<Decoded, ProxyHeaderError> {
    let n = buf.len().min(SIG_V2.len());
    if buf[..n] == SIG_V2[..n] {
        return decode_v2(buf);
    }
    let n = buf.len().min(PREFIX_V1.len());
    if buf[..n] == PREFIX_V1[..n] {
        return decode_v1(buf);
    }
    Err(ProxyHeaderError::Missing)
}

fn decode_v1(buf: &[u8]) -> Result<Decoded, ProxyHeaderError> {
    let window = &buf[..buf.len().min(MAX_V1)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_V1 {
            Err(ProxyHeaderError::TooLong)
        } else {
            Ok(Decoded::Incomplete { total: None })
        };
    };
    let line = std::str::from_utf8(&buf[PREFIX_V1.len()..end])
        .map_err(|_| ProxyHeaderError::Malformed("not ASCII"))?;
    let mut parts = line.split(' ');
    let source = match parts.next() {
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(ProxyHeaderError::Malformed("expected four fields"));
            };
            let parse_ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
                let ip = if family == "TCP4" {
                    s.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    s.parse::<Ipv6Addr>().map(IpAddr::V6)
                };
                ip.map_err(|_| ProxyHeaderError::Malformed("bad address"))
            };
            let parse_port = |s: &str| -> Result<u16, ProxyHeaderError> {
                if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ProxyHeaderError::Malformed("bad port"));
                }
                s.parse()
                    .map_err(|_| ProxyHeaderError::Malformed("bad port"))
            };
            let ip = parse_ip(src)?;
            parse_ip(dst)?;
            let port = parse_port(sport)?;
            parse_port(dport)?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(ProxyHeaderError::Malformed("unknown protocol")),
    };
    Ok(Decoded::Header {
        len: end + 2,
        source,
    })
}

fn decode_v2(buf: &[u8]) -> Result<Decoded, ProxyHeaderError> {
    if buf.len() < 16 {
        return Ok(Decoded::Incomplete { total: None });
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("unsupported version"));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if total > MAX_V2 {
        return Err(ProxyHeaderError::TooLong);
    }
    if buf.len() < total {
        return Ok(Decoded::Incomplete { total: Some(total) });
    }
    let body = &buf[16..total];
    let source = match ver_cmd & 0x0f {
        // LOCAL: the proxy's own connection (a health check)
        0 => None,
        1 => match family >> 4 {
            1 => {
                let b: &[u8; 12] = body
                    .get(..12)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(ProxyHeaderError::Malformed("short IPv4 addresses"))?;
                let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                Some(SocketAddr::new(ip.into(), u16::from_be_bytes([b[8], b[9]])))
            }
            2 => {
                let b: &[u8; 36] = body
                    .get(..36)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(ProxyHeaderError::Malformed("short IPv6 addresses"))?;
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&b[..16]);
                let port = u16::from_be_bytes([b[32], b[33]]);
                Some(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
            }
            // AF_UNSPEC or AF_UNIX: no IP to name
            0 | 3 => None,
            _ => return Err(ProxyHeaderError::Malformed("unknown address family")),
        },
        _ => return Err(ProxyHeaderError::Malformed("unknown command")),
    };
    Ok(Decoded::Header { len: total, source })
}

/// Read the PROXY header a connection starts with, consuming exactly its bytes (what
/// follows is the client's HTTP), within `timeout`. Returns the address it names (`None`
/// for the proxy's own health checks: keep the TCP peer then).
pub(crate) async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(timeout, read_header_inner(stream))
        .await
        .unwrap_or(Err(ProxyHeaderError::NotReceived))
}

async fn read_header_inner(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = [0u8; MAX_V1];
    let mut last = 0;
    let mut wait = Duration::from_millis(2);
    loop {
        // Peek, so the bytes after the header stay in the socket for hyper.
        let n = stream
            .peek(&mut buf)
            .await
            .map_err(|_| ProxyHeaderError::NotReceived)?;
        if n == 0 {
            return Err(ProxyHeaderError::NotReceived);
        }
        match decode(&buf[..n])? {
            Decoded::Header { len, source } => {
                let mut sink = [0u8; MAX_V1];
                stream
                    .read_exact(&mut sink[..len])
                    .await
                    .map_err(|_| ProxyHeaderError::NotReceived)?;
                return Ok(source);
            }
            Decoded::Incomplete { total: Some(total) } => {
                // v2 with TLVs: its length is known, read it whole
                let mut whole = vec![0u8; total];
                stream
                    .read_exact(&mut whole)
                    .await
                    .map_err(|_| ProxyHeaderError::NotReceived)?;
                return match decode(&whole)? {
                    Decoded::Header { source, .. } => Ok(source),
                    Decoded::Incomplete { .. } => Err(ProxyHeaderError::Malformed("length")),
                };
            }
            Decoded::Incomplete { total: None } => {
                // Proxies send the header in one segment; a split one is rare. A peek
                // returns the same bytes until more arrive, so wait between peeks, longer
                // each time nothing came (a client trickling a header costs a few wakeups
                // a second, and `timeout` ends it).
                if n == last {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(100));
                }
                last = n;
            }
        }
    }
}

/// Encode a v2 header naming `source` (for tests and load tools).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = SIG_V2.to_vec();
    out.push(0x21); // version 2, PROXY
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

/// Encode a v1 header naming `source` (for tests and load tools).
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> String {
    let family = if source.is_ipv4() && destination.is_ipv4() {
        "TCP4"
    } else {
        "TCP6"
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
}

/// The codec, for the fuzz target.
pub(crate) fn check_for_fuzz(buf: &[u8]) {
    if let Ok(Decoded::Header { len, .. }) = decode(buf) {
        assert!(len <= buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            decode(h),
            Ok(Decoded::Header {
                len: 41,
                source: Some(addr("192.0.2.7:56324"))
            })
        );
        let h = b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n";
        assert_eq!(
            decode(h),
            Ok(Decoded::Header {
                len: h.len(),
                source: Some(addr("[2001:db8::1]:1"))
            })
        );
        assert_eq!(
            decode(b"PROXY UNKNOWN\r\n"),
            Ok(Decoded::Header {
                len: 15,
                source: None
            })
        );
        assert_eq!(decode(b"PRO"), Ok(Decoded::Incomplete { total: None }));
        assert_eq!(
            decode(b"PROXY TCP4 1.2.3.4"),
            Ok(Decoded::Incomplete { total: None })
        );
        assert_eq!(
            decode(b"GET / HTTP/1.1\r\n"),
            Err(ProxyHeaderError::Missing)
        );
        assert!(matches!(
            decode(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n"),
            Err(ProxyHeaderError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"PROXY TCP4 ::1 5.6.7.8 1 1\r\n"),
            Err(ProxyHeaderError::Malformed(_))
        ));
        assert_eq!(decode(&[b'P'; 200]), Err(ProxyHeaderError::Missing));
        let mut long = b"PROXY ".to_vec();
        long.extend([b'x'; 200]);
        assert_eq!(decode(&long), Err(ProxyHeaderError::TooLong));
    }

    #[test]
    fn v2_headers() {
        let h = encode_v2(addr("192.0.2.7:56324"), addr("10.0.0.1:443"));
        assert_eq!(h.len(), 28);
        assert_eq!(
            decode(&h),
            Ok(Decoded::Header {
                len: 28,
                source: Some(addr("192.0.2.7:56324"))
            })
        );
        assert_eq!(
            decode(&h[..20]),
            Ok(Decoded::Incomplete { total: Some(28) })
        );
        let mut local = SIG_V2.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(
            decode(&local),
            Ok(Decoded::Header {
                len: 16,
                source: None
            })
        );
        let mut bad = h.clone();
        bad[12] = 0x31;
        assert!(matches!(decode(&bad), Err(ProxyHeaderError::Malformed(_))));
        let mut huge = h.clone();
        huge[14] = 0xff;
        assert_eq!(decode(&huge), Err(ProxyHeaderError::TooLong));
    }

    proptest! {
        /// Whatever the bytes, decode never panics and never claims more than it has.
        #[test]
        fn decode_is_total(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            check_for_fuzz(&buf);
        }

        /// Encoded headers decode to their source, and every strict prefix is incomplete.
        #[test]
        fn round_trips(a in any::<[u8; 4]>(), p in any::<u16>(), v6 in any::<[u8; 16]>(), q in any::<u16>()) {
            let dst = addr("10.0.0.1:443");
            for src in [SocketAddr::new(Ipv4Addr::from(a).into(), p), SocketAddr::new(Ipv6Addr::from(v6).into(), q)] {
                let v2 = encode_v2(src, dst);
                prop_assert_eq!(decode(&v2), Ok(Decoded::Header { len: v2.len(), source: Some(src) }));
                for cut in 0..v2.len() {
                    let incomplete = matches!(decode(&v2[..cut]), Ok(Decoded::Incomplete { .. }));
                    prop_assert!(incomplete, "v2 cut at {}", cut);
                }
                let v1 = encode_v1(src, if src.is_ipv4() { dst } else { addr("[::1]:443") });
                prop_assert_eq!(decode(v1.as_bytes()), Ok(Decoded::Header { len: v1.len(), source: Some(src) }));
                for cut in 0..v1.len() {
                    let incomplete = matches!(decode(&v1.as_bytes()[..cut]), Ok(Decoded::Incomplete { .. }));
                    prop_assert!(incomplete, "v1 cut at {}", cut);
                }
            }
        }
    }
}
