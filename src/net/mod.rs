//! Who is on the other end: trusted proxies, the PROXY protocol, and per-IP admission.
//!
//! Behind a reverse proxy every TCP connection comes from the proxy, so per-IP limits
//! would cap the whole site and logs would name one address. [`TrustedProxies`] lists
//! the proxies whose word about the client is believed:
//! - for a connection from a trusted address, the client is the rightmost address of
//!   `Forwarded: for=` (RFC 7239) or, when that header is absent, of `X-Forwarded-For`,
//!   that is not itself trusted (proxies append, so everything left of the first untrusted
//!   hop was written by the client and is ignored);
//! - from any other peer those headers are ignored: the client is the TCP peer.
//!
//! With [`AppOptions::proxy_protocol`](crate::AppOptions) on, every connection must start
//! with a PROXY protocol v1 or v2 header (HAProxy, AWS NLB), which names the client before
//! any HTTP; a connection without one is closed.
//!
//! The resolved address is what handlers see as `ConnectInfo<SocketAddr>`, what the
//! WebSocket auth hook sees as [`ConnectRequest::remote_addr`](crate::ws::ConnectRequest),
//! and what every per-IP limit counts.
//!
//! ```
//! use street::net::TrustedProxies;
//! let proxies = TrustedProxies::parse(["10.0.0.0/8", "::1/128"]).expect("valid CIDRs");
//! let mut headers = http::HeaderMap::new();
//! headers.insert("x-forwarded-for", "203.0.113.9, 198.51.100.4, 10.1.2.3".parse().unwrap());
//! let peer = "10.0.0.5:40000".parse().unwrap();
//! // 10.1.2.3 is another trusted proxy; 198.51.100.4 is the client (203.0.113.9 is what
//! // the client claimed, and is ignored)
//! assert_eq!(proxies.client_addr(peer, &headers).ip().to_string(), "198.51.100.4");
//! // from an untrusted peer the header means nothing
//! let direct = "192.0.2.1:5000".parse().unwrap();
//! assert_eq!(proxies.client_addr(direct, &headers), direct);
//! ```

pub(crate) mod body;
pub(crate) mod per_ip;
pub(crate) mod proxy_protocol;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::HeaderMap;

pub use body::BodyTimeout;
pub use proxy_protocol::{encode_v1 as proxy_v1_header, encode_v2 as proxy_v2_header};

use crate::ws::stats::Counter;

/// What an app's HTTP layer refused, by reason (see [`App::http_stats`](crate::App)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HttpStats {
    /// Connections refused with 429: their address already held
    /// [`AppOptions::max_connections_per_ip`](crate::AppOptions) connections.
    pub rejected_per_ip: u64,
    /// Connections closed for a missing or malformed PROXY protocol header.
    pub proxy_header_invalid: u64,
    /// Request bodies that went over [`AppOptions::max_body_bytes`](crate::AppOptions)
    /// (413 from axum's extractors).
    pub body_too_large: u64,
    /// Request bodies not received within
    /// [`AppOptions::body_read_timeout`](crate::AppOptions).
    pub body_timeout: u64,
}

/// The live counters behind [`HttpStats`].
#[derive(Debug, Default)]
pub(crate) struct HttpCounters {
    pub(crate) rejected_per_ip: Counter,
    pub(crate) proxy_header_invalid: Counter,
    pub(crate) body_too_large: Counter,
    pub(crate) body_timeout: Counter,
}

impl HttpCounters {
    pub(crate) fn snapshot(&self) -> HttpStats {
        HttpStats {
            rejected_per_ip: self.rejected_per_ip.get(),
            proxy_header_invalid: self.proxy_header_invalid.get(),
            body_too_large: self.body_too_large.get(),
            body_timeout: self.body_timeout.get(),
        }
    }
}

/// An address range in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// A CIDR that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {0:?}: expected ADDRESS or ADDRESS/PREFIX")]
pub struct CidrError(String);

impl Cidr {
    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let net = canonical(addr.parse::<IpAddr>().map_err(|_| err())?);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?,
            None => max,
        };
        Ok(Self { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The reverse proxies whose `Forwarded` / `X-Forwarded-For` headers name the client.
/// Empty by default: headers are ignored and the client is the TCP peer. See the
/// [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<Cidr>,
}

/// Most forwarding hops read from the headers; a longer chain is read from its right end
/// only (what a client prepends can cost nothing).
const MAX_HOPS: usize = 32;

impl TrustedProxies {
    /// Trust these ranges.
    ///
    /// # Errors
    /// The first entry that is not a CIDR or an address.
    pub fn parse<I, S>(ranges: I) -> Result<Self, CidrError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ranges = ranges
            .into_iter()
            .map(|r| r.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(Self { ranges })
    }

    /// Trust these ranges.
    pub fn new(ranges: Vec<Cidr>) -> Self {
        Self { ranges }
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    /// The client of a request that arrived from `peer` with `headers` (see the
    /// [module docs](self)). The port is the forwarded one when given, else 0 for a
    /// forwarded address (the proxy's port says nothing about the client).
    pub fn client_addr(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.is_trusted(peer.ip()) {
            return peer;
        }
        let mut hops: Vec<SocketAddr> = Vec::new();
        let forwarded = headers.get_all(http::header::FORWARDED);
        if forwarded.iter().next().is_some() {
            for v in forwarded.iter().rev() {
                let Ok(v) = v.to_str() else { return peer };
                for elem in v.rsplit(',') {
                    // a for= naming no IP (obfuscated, "unknown") ends what can be believed
                    match forwarded_for(elem) {
                        Some(a) => hops.push(a),
                        None => return hops.last().copied().unwrap_or(peer),
                    }
                    if hops.len() >= MAX_HOPS {
                        break;
                    }
                }
            }
        } else {
            for v in headers.get_all("x-forwarded-for").iter().rev() {
                let Ok(v) = v.to_str() else { return peer };
                for item in v.rsplit(',') {
                    match parse_node(item.trim()) {
                        Some(a) => hops.push(a),
                        None => return hops.last().copied().unwrap_or(peer),
                    }
                    if hops.len() >= MAX_HOPS {
                        break;
                    }
                }
            }
        }
        // the rightmost hop that is not a trusted proxy; if every hop is, the leftmost
        hops.iter()
            .copied()
            .find(|a| !self.is_trusted(a.ip()))
            .or_else(|| hops.last().copied())
            .unwrap_or(peer)
    }
}

/// The `for=` of one `Forwarded` element (`for=192.0.2.60;proto=http;by=…`).
fn forwarded_for(elem: &str) -> Option<SocketAddr> {
    elem.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        parse_node(v.trim().trim_matches('"'))
    })
}

/// `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80` or a bare IPv6 address.
fn parse_node(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(c.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn forwarded_headers() {
        let p = TrustedProxies::parse(["127.0.0.1", "10.0.0.0/8"]).unwrap();
        let peer: SocketAddr = "127.0.0.1:1234".parse().unwrap();
        let ip = |hs: &[(&str, &str)]| p.client_addr(peer, &h(hs)).ip().to_string();
        assert_eq!(ip(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2")]), "2.2.2.2");
        assert_eq!(ip(&[("x-forwarded-for", "1.1.1.1, 10.0.0.9")]), "1.1.1.1");
        assert_eq!(
            ip(&[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2")
            ]),
            "2.2.2.2"
        );
        // every hop trusted: the leftmost
        assert_eq!(ip(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]), "10.0.0.1");
        // garbage to the left of a good hop is never reached; at the right end it stops
        assert_eq!(ip(&[("x-forwarded-for", "junk, 3.3.3.3")]), "3.3.3.3");
        assert_eq!(ip(&[("x-forwarded-for", "3.3.3.3, junk")]), "127.0.0.1");
        assert_eq!(
            ip(&[(
                "forwarded",
                "for=1.1.1.1, for=\"[2001:db8::7]:4711\";proto=https"
            )]),
            "2001:db8::7"
        );
        // Forwarded wins over X-Forwarded-For
        assert_eq!(
            ip(&[("forwarded", "for=4.4.4.4"), ("x-forwarded-for", "5.5.5.5")]),
            "4.4.4.4"
        );
        assert_eq!(ip(&[("forwarded", "for=unknown")]), "127.0.0.1");
        assert_eq!(ip(&[]), "127.0.0.1");
        // an untrusted peer's headers are ignored
        let direct: SocketAddr = "192.0.2.1:9".parse().unwrap();
        assert_eq!(
            p.client_addr(direct, &h(&[("x-forwarded-for", "1.1.1.1")])),
            direct
        );
    }
}
