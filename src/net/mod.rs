//! Who is on the other end: trusted proxies, the PROXY protocol, and per-IP admission.
//!
//! Behind a reverse proxy every TCP connection comes from the proxy, so per-IP limits
//! would cap the whole site and logs would name one address. [`TrustedProxies`] lists
//! the proxies whose word about the client is believed:
//! - for a request from a trusted address, the client is the rightmost address of
//!   `X-Forwarded-For` (or of `Forwarded: for=`, RFC 7239, with
//!   [`TrustedProxies::with_header`]: exactly one of the two is read) that is not itself
//!   trusted. Proxies append, so everything left of the first untrusted hop was written by
//!   the client and is ignored; an unreadable hop ends the walk at the last trusted one;
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
mod layer;
pub(crate) mod per_ip;
pub(crate) mod proxy_protocol;
pub(crate) mod takeover;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::HeaderMap;

pub use body::BodyTimeout;
pub use layer::{ClientAddr, ClientAddrLayer};
pub use proxy_protocol::{encode_v1 as proxy_v1_header, encode_v2 as proxy_v2_header};

use crate::counters::stats;

stats! {
    families {
        CONNECTIONS_REJECTED = counter(
            "street_http_connections_rejected_total",
            "HTTP connections refused or closed before any request, by reason.",
        );
        BODIES_REJECTED = counter(
            "street_http_bodies_rejected_total",
            "Request bodies refused, by reason.",
        );
    }
    /// What an app's HTTP layer refused, by reason (see [`App::http_stats`](crate::App)).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    #[non_exhaustive]
    pub struct HttpStats counted in HttpCounters {
        /// Connections refused with 429: their address already held
        /// [`AppOptions::max_connections_per_ip`](crate::AppOptions) connections.
        count rejected_per_ip => CONNECTIONS_REJECTED.with("reason", "ip"),
        /// Connections closed for a missing or malformed PROXY protocol header.
        count proxy_header_invalid => CONNECTIONS_REJECTED.with("reason", "proxy_header"),
        /// Request bodies that went over [`AppOptions::max_body_bytes`](crate::AppOptions)
        /// (413 from axum's extractors).
        count body_too_large => BODIES_REJECTED.with("reason", "too_large"),
        /// Request bodies not received within
        /// [`AppOptions::body_read_timeout`](crate::AppOptions).
        count body_timeout => BODIES_REJECTED.with("reason", "timeout"),
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
        let parsed = addr.parse::<IpAddr>().map_err(|_| err())?;
        let net = canonical(parsed);
        // an IPv4-mapped range (::ffff:10.0.0.0/104) is the IPv4 range (10.0.0.0/8)
        let mapped = parsed.is_ipv6() && net.is_ipv4();
        let written_max = if parsed.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= written_max && (!mapped || *p >= 96))
                .ok_or_else(err)?,
            None => written_max,
        };
        let prefix = if mapped { prefix - 96 } else { prefix };
        Ok(Self { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The reverse proxies whose `X-Forwarded-For` (or, if chosen, `Forwarded`) header names
/// the client.
/// Empty by default: headers are ignored and the client is the TCP peer. See the
/// [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<Cidr>,
    header: ForwardedHeader,
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
        Ok(Self::new(ranges))
    }

    /// Trust these ranges.
    pub fn new(ranges: Vec<Cidr>) -> Self {
        Self {
            ranges,
            header: ForwardedHeader::default(),
        }
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    /// Read the client from `header` instead of `X-Forwarded-For`. Exactly one header is
    /// read: proxies append to the one they write and pass the other through as the client
    /// sent it, so reading both would let a client name itself.
    pub fn with_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The client of a request that arrived from `peer` with `headers` (see the
    /// [module docs](self)). The port is the forwarded one when given, else 0 for a
    /// forwarded address (the proxy's port says nothing about the client).
    pub fn client_addr(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.is_trusted(peer.ip()) {
            return peer;
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        // From the right, each trusted hop vouches for the one on its left; the first hop
        // that is not a trusted proxy is the client. Anything unreadable was written by
        // someone no proxy vouches for: the last trusted hop read is then the best known.
        let mut last = peer;
        let mut hops = 0;
        for value in headers.get_all(name).iter().rev() {
            let Ok(v) = value.to_str() else { return last };
            for item in v.rsplit(',') {
                let hop = match self.header {
                    ForwardedHeader::XForwardedFor => parse_node(item.trim()),
                    ForwardedHeader::Forwarded => forwarded_for(item),
                };
                let Some(hop) = hop else { return last };
                if !self.is_trusted(hop.ip()) {
                    return hop;
                }
                last = hop;
                hops += 1;
                if hops >= MAX_HOPS {
                    return last;
                }
            }
        }
        // every hop is a trusted proxy: the leftmost
        last
    }
}

/// Which header a trusted proxy names the client in (see [`TrustedProxies::with_header`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx `$proxy_add_x_forwarded_for`, HAProxy
    /// `option forwardfor`, Caddy, AWS ALB). The default.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
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
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped, c);
        assert!("::ffff:10.0.0.0/95".parse::<Cidr>().is_err());
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
        // what the client wrote left of garbage is never believed
        assert_eq!(
            ip(&[("x-forwarded-for", "x, 6.6.6.6, 10.0.0.3")]),
            "6.6.6.6"
        );
        assert_eq!(
            ip(&[("x-forwarded-for", "6.6.6.6, x, 10.0.0.3")]),
            "10.0.0.3"
        );
        // only the chosen header is read: a client's own Forwarded passes through nginx
        assert_eq!(
            ip(&[("forwarded", "for=4.4.4.4"), ("x-forwarded-for", "5.5.5.5")]),
            "5.5.5.5"
        );
        assert_eq!(ip(&[("forwarded", "for=4.4.4.4")]), "127.0.0.1");
        let fwd = p.clone().with_header(ForwardedHeader::Forwarded);
        let ipf = |hs: &[(&str, &str)]| fwd.client_addr(peer, &h(hs)).ip().to_string();
        assert_eq!(
            ipf(&[(
                "forwarded",
                r#"for=1.1.1.1, for="[2001:db8::7]:4711";proto=https"#
            )]),
            "2001:db8::7"
        );
        assert_eq!(ipf(&[("forwarded", "for=unknown, for=6.6.6.6")]), "6.6.6.6");
        assert_eq!(
            ipf(&[("forwarded", "for=6.6.6.6, for=unknown")]),
            "127.0.0.1"
        );
        assert_eq!(ipf(&[("x-forwarded-for", "5.5.5.5")]), "127.0.0.1");
        assert_eq!(ip(&[]), "127.0.0.1");
        // an untrusted peer's headers are ignored
        let direct: SocketAddr = "192.0.2.1:9".parse().unwrap();
        assert_eq!(
            p.client_addr(direct, &h(&[("x-forwarded-for", "1.1.1.1")])),
            direct
        );
    }
}
