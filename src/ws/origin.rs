//! The Origin gate, run before the handshake (cross-site WebSocket hijacking defence).
//!
//! Rules, as in `@streetjs/websocket`:
//! - no `Origin` header → allowed (non-browser clients send none);
//! - an `Origin` that does not parse as `scheme://host[:port]` → rejected (403);
//! - with `allowed_origins` configured, the normalized origin must be one of them;
//! - otherwise it must be the server's own origin, derived from the `Host` header.
//!   street accepts both `http://` and `https://` for the own host, because behind a
//!   TLS-terminating proxy the browser says `https` while this server sees plain HTTP;
//!   the host and port must still match exactly.

/// An origin normalized to `scheme://host[:port]`, lowercase, default port removed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// Parse and normalize an origin or URL (path, query and fragment are ignored).
    /// Returns `None` for anything that is not `scheme://host[:port]` with a special
    /// scheme (`http`, `https`, `ws`, `wss`); like browsers, other schemes and `null` have
    /// opaque origins that never match.
    ///
    /// ```
    /// use street::ws::Origin;
    /// assert_eq!(Origin::parse("HTTPS://Example.COM:443/x").unwrap().to_string(), "https://example.com");
    /// assert_eq!(Origin::parse("http://a.b:8080").unwrap().to_string(), "http://a.b:8080");
    /// assert!(Origin::parse("null").is_none());
    /// assert!(Origin::parse("http://").is_none());
    /// ```
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        let (scheme, rest) = raw.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => return None,
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') || authority.is_empty() {
            return None;
        }
        let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
            let (h, after) = stripped.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (format!("[{}]", h.to_ascii_lowercase()), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                None => (authority.to_ascii_lowercase(), None),
            }
        };
        if host.is_empty() || host == "[]" || !host.chars().all(valid_host_char) {
            return None;
        }
        let port = match port {
            None | Some("") => None,
            Some(p) => {
                if !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 5 {
                    return None;
                }
                let n: u32 = p.parse().ok()?;
                let n = u16::try_from(n).ok()?;
                (n != default_port).then_some(n)
            }
        };
        Some(Self { scheme, host, port })
    }

    fn same_host(&self, other: &Self) -> bool {
        self.host == other.host && self.port == other.port
    }
}

fn valid_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':' | '%')
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// The outcome of the origin gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OriginVerdict {
    Allowed,
    Malformed,
    Foreign,
}

/// Decide whether an upgrade with these headers passes the origin gate.
pub(crate) fn check(
    origin: Option<&http::HeaderValue>,
    host: Option<&http::HeaderValue>,
    allowed: &[Origin],
) -> OriginVerdict {
    let Some(raw) = origin else {
        return OriginVerdict::Allowed;
    };
    let Some(origin) = raw.to_str().ok().and_then(Origin::parse) else {
        return OriginVerdict::Malformed;
    };
    if !allowed.is_empty() {
        return if allowed.contains(&origin) {
            OriginVerdict::Allowed
        } else {
            OriginVerdict::Foreign
        };
    }
    let own = host
        .and_then(|h| h.to_str().ok())
        .and_then(|h| Origin::parse(&format!("http://{h}")));
    match own {
        Some(own)
            if matches!(origin.scheme.as_str(), "http" | "https") && own.same_host(&origin) =>
        {
            // compare ports as the browser would state them for its scheme
            OriginVerdict::Allowed
        }
        Some(own)
            if origin.scheme == "https" && own.host == origin.host && own.port == Some(443) =>
        {
            OriginVerdict::Allowed
        }
        _ => OriginVerdict::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn gate() {
        let host = hv("localhost:3000");
        assert_eq!(check(None, Some(&host), &[]), OriginVerdict::Allowed);
        assert_eq!(
            check(Some(&hv("http://localhost:3000")), Some(&host), &[]),
            OriginVerdict::Allowed
        );
        assert_eq!(
            check(Some(&hv("http://LOCALHOST:3000/")), Some(&host), &[]),
            OriginVerdict::Allowed
        );
        assert_eq!(
            check(Some(&hv("http://evil.com")), Some(&host), &[]),
            OriginVerdict::Foreign
        );
        assert_eq!(
            check(Some(&hv("http://localhost:3001")), Some(&host), &[]),
            OriginVerdict::Foreign
        );
        assert_eq!(
            check(Some(&hv("not a url")), Some(&host), &[]),
            OriginVerdict::Malformed
        );
        assert_eq!(
            check(Some(&hv("null")), Some(&host), &[]),
            OriginVerdict::Malformed
        );
        assert_eq!(
            check(Some(&hv("http://x")), None, &[]),
            OriginVerdict::Foreign
        );
        let allowed = vec![Origin::parse("https://app.example.com").unwrap()];
        assert_eq!(
            check(
                Some(&hv("https://app.example.com:443")),
                Some(&host),
                &allowed
            ),
            OriginVerdict::Allowed
        );
        assert_eq!(
            check(Some(&hv("http://app.example.com")), Some(&host), &allowed),
            OriginVerdict::Foreign
        );
        assert_eq!(
            check(Some(&hv("http://localhost:3000")), Some(&host), &allowed),
            OriginVerdict::Foreign
        );
    }

    #[test]
    fn ipv6_and_ports() {
        assert_eq!(
            Origin::parse("http://[::1]:80").unwrap().to_string(),
            "http://[::1]"
        );
        assert_eq!(
            Origin::parse("http://[::1]:9").unwrap().to_string(),
            "http://[::1]:9"
        );
        assert!(Origin::parse("http://a:99999").is_none());
        assert!(Origin::parse("http://a:b").is_none());
        assert!(Origin::parse("http://u@a").is_none());
        assert!(Origin::parse("ftp://a").is_none());
    }
}
