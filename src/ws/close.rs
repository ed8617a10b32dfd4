//! Close codes, close reasons and what a close handler is told.
//!
//! Ranges (RFC 6455 §7.4): 1000–2999 belong to the protocol, 3000–3999 to libraries and
//! frameworks, 4000–4999 to applications. Codes street itself sends:
//!
//! | code | when | reconnect? |
//! |---|---|---|
//! | 1000 | `socket.close()` default | app decides |
//! | 1001 | server shutdown (`wss.close()`, SIGTERM) | yes, with jitter |
//! | 1002 | protocol violation by the client | no |
//! | 1007 | invalid UTF-8 in a text message | no |
//! | 1009 | message over `max_payload` | no |
//! | 1011 | the connection handler returned an error | yes |
//! | 1013 | server at capacity | yes, later |
//! | 1006 | never sent: reported to close handlers for a reaped or dropped peer | — |

use serde::{Deserialize, Serialize};

/// A WebSocket close status code, as [`Socket::close`](super::Socket::close) takes it:
/// a constant below, or `CloseCode(4000..=4999)` for an application's own codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: Self = Self(1000);
    /// 1001: going away (server shutdown).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: unsupported data.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: no status code was present (never sent; reported to handlers).
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: abnormal closure without a close frame (never sent; reported to handlers).
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: invalid payload data (e.g. invalid UTF-8).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: policy violation.
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: message too big.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// 1011: internal server error.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1013: try again later (server at capacity).
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// 4008: street's slow-consumer close (the client did not read fast enough; its
    /// queue was dropped). Reconnectable. Same as [`SLOW_CONSUMER_CODE`](super::SLOW_CONSUMER_CODE).
    pub const SLOW_CONSUMER: Self = Self(4008);
    /// 4010: the connection's credentials expired and were not refreshed in time (see
    /// [`Socket::set_expiry`](super::Socket::set_expiry)). Reconnectable with new ones:
    /// street.js does when it has a `getToken`.
    pub const TOKEN_EXPIRED: Self = Self(4010);

    /// Whether this code may be sent in a close frame (RFC 6455 §7.4.1–7.4.2).
    ///
    /// ```
    /// use street::ws::CloseCode;
    /// assert!(CloseCode(4001).is_sendable());
    /// assert!(!CloseCode(1006).is_sendable());
    /// assert!(!CloseCode(999).is_sendable());
    /// ```
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Compare with a number: `info.code == 1000`.
impl PartialEq<u16> for CloseCode {
    fn eq(&self, other: &u16) -> bool {
        self.0 == *other
    }
}

impl From<u16> for CloseCode {
    fn from(c: u16) -> Self {
        Self(c)
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The longest close reason a close frame can carry, in bytes.
pub const MAX_REASON_BYTES: usize = 123;

/// Cut `reason` to at most [`MAX_REASON_BYTES`] bytes on a character boundary.
pub(crate) fn truncate_reason(reason: &str) -> &str {
    super::text::prefix_within(reason, MAX_REASON_BYTES)
}

/// What close handlers receive: how the connection ended.
///
/// ```
/// use street::ws::CloseInfo;
/// let info: CloseInfo = serde_json::from_str(r#"{"code":1000,"reason":"bye"}"#).unwrap();
/// assert_eq!(info.code, street::ws::CloseCode::NORMAL);
/// assert_eq!(info.code, 1000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseInfo {
    /// The close code (1006 when the peer vanished without a close frame or was reaped).
    /// Serialized as a number.
    pub code: CloseCode,
    /// The close reason (may be empty).
    pub reason: String,
}

impl CloseInfo {
    pub(crate) fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundary() {
        let s = "é".repeat(100);
        let t = truncate_reason(&s);
        assert!(t.len() <= MAX_REASON_BYTES);
        assert_eq!(t.len(), 122);
        assert_eq!(truncate_reason("ok"), "ok");
    }
}
