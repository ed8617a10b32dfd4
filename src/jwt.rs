//! `JwtService`: HS256 signing and verification (RS256/ES256 verification with a public
//! key), with `exp`/`nbf` validation and typed error kinds.
//!
//! jsonwebtoken 11 picks its crypto backend at run time and panics at the first
//! sign/verify when none (or two) is installed. street enables exactly one backend
//! (`rust_crypto`) and installs it explicitly in every constructor, so that trap cannot
//! fire; a test covers it.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Environment variable read by [`JwtService::from_env`].
pub const SECRET_ENV: &str = "STREET_JWT_SECRET";

/// What went wrong with a token or key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtErrorKind {
    /// No secret configured.
    MissingSecret,
    /// The key material is not usable (bad PEM, too short a secret).
    InvalidKey,
    /// The token is not three base64url parts of JSON.
    Malformed,
    /// The signature does not match.
    InvalidSignature,
    /// The token's algorithm is not the one this service accepts.
    WrongAlgorithm,
    /// `exp` is in the past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// A required claim is missing or has the wrong type.
    InvalidClaims,
    /// Signing failed (claims do not serialize).
    Signing,
}

/// A JWT error: a kind to match on and a message that says what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct JwtError {
    /// The kind.
    pub kind: JwtErrorKind,
    message: String,
}

impl JwtError {
    fn new(kind: JwtErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<jsonwebtoken::errors::Error> for JwtError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        let kind = match e.kind() {
            K::ExpiredSignature => JwtErrorKind::Expired,
            K::ImmatureSignature => JwtErrorKind::NotYetValid,
            K::InvalidSignature => JwtErrorKind::InvalidSignature,
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
                JwtErrorKind::WrongAlgorithm
            }
            K::MissingRequiredClaim(_) | K::InvalidClaimFormat(_) | K::Json(_) => {
                JwtErrorKind::InvalidClaims
            }
            K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat | K::InvalidEddsaKey => {
                JwtErrorKind::InvalidKey
            }
            K::Signing(_) | K::RsaFailedSigning => JwtErrorKind::Signing,
            _ => JwtErrorKind::Malformed,
        };
        JwtError::new(kind, format!("invalid token: {e}"))
    }
}

/// Options for [`JwtService::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JwtOptions {
    /// HS256 secret (at least 16 bytes). Default: `STREET_JWT_SECRET` if set.
    pub secret: Option<String>,
    /// Lifetime added as `exp` by [`JwtService::sign`] when the claims have none.
    /// Default 1 hour.
    pub expires_in: Duration,
    /// Clock skew tolerated for `exp`/`nbf`. Default 0 s.
    pub leeway: Duration,
}

impl Default for JwtOptions {
    fn default() -> Self {
        Self {
            secret: std::env::var(SECRET_ENV).ok(),
            expires_in: Duration::from_secs(3600),
            leeway: Duration::ZERO,
        }
    }
}

/// Signs and verifies JSON Web Tokens.
///
/// ```
/// use street::jwt::{JwtService, JwtOptions, JwtErrorKind};
/// #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// struct Claims { sub: String, exp: u64 }
/// let jwt = JwtService::new(JwtOptions::default().with_secret(Some("a-very-long-test-secret".into()))).unwrap();
/// let token = jwt.sign(&serde_json::json!({"sub": "u1"})).unwrap();
/// let claims: Claims = jwt.verify(&token).unwrap();
/// assert_eq!(claims.sub, "u1");
/// assert_eq!(jwt.verify::<Claims>("x.y.z").unwrap_err().kind, JwtErrorKind::Malformed);
/// ```
#[derive(Clone)]
pub struct JwtService {
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    algorithm: Algorithm,
    expires_in: Duration,
    leeway: Duration,
}

impl std::fmt::Debug for JwtService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtService")
            .field("algorithm", &self.algorithm)
            .field("can_sign", &self.encoding.is_some())
            .finish()
    }
}

fn install_provider() {
    // Exactly one backend is compiled in; installing twice returns Err, which is fine.
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtService {
    /// An HS256 service.
    ///
    /// # Errors
    /// [`JwtErrorKind::MissingSecret`] without a secret; [`JwtErrorKind::InvalidKey`] for a
    /// secret shorter than 16 bytes.
    pub fn new(opts: JwtOptions) -> Result<Self, JwtError> {
        install_provider();
        let secret = opts.secret.ok_or_else(|| {
            JwtError::new(
                JwtErrorKind::MissingSecret,
                format!("no JWT secret: set JwtOptions::secret or the {SECRET_ENV} environment variable"),
            )
        })?;
        if secret.len() < 16 {
            return Err(JwtError::new(
                JwtErrorKind::InvalidKey,
                "JWT secret too short: use at least 16 bytes (32 random bytes recommended)",
            ));
        }
        Ok(Self {
            encoding: Some(EncodingKey::from_secret(secret.as_bytes())),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            algorithm: Algorithm::HS256,
            expires_in: opts.expires_in,
            leeway: opts.leeway,
        })
    }

    /// An HS256 service with the secret from `STREET_JWT_SECRET`.
    ///
    /// # Errors
    /// As [`JwtService::new`].
    pub fn from_env() -> Result<Self, JwtError> {
        Self::new(JwtOptions::default())
    }

    /// A verify-only service for RS256 (RSA) or ES256 (P-256) tokens, from a PEM public key.
    ///
    /// # Errors
    /// [`JwtErrorKind::InvalidKey`] for a bad PEM; [`JwtErrorKind::WrongAlgorithm`] for any
    /// algorithm other than RS256/ES256.
    pub fn verifier_from_pem(
        algorithm: Algorithm,
        public_key_pem: &[u8],
    ) -> Result<Self, JwtError> {
        install_provider();
        let decoding = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(public_key_pem)?,
            Algorithm::ES256 => DecodingKey::from_ec_pem(public_key_pem)?,
            other => {
                return Err(JwtError::new(
                    JwtErrorKind::WrongAlgorithm,
                    format!(
                    "{other:?} is not supported for public-key verification; use RS256 or ES256"
                ),
                ))
            }
        };
        Ok(Self {
            encoding: None,
            decoding,
            algorithm,
            expires_in: Duration::from_secs(3600),
            leeway: Duration::ZERO,
        })
    }

    /// Sign `claims` (any JSON object). Adds `iat`, and `exp` = now + `expires_in` when
    /// the claims have no `exp`.
    ///
    /// # Errors
    /// [`JwtErrorKind::Signing`] when the claims are not a JSON object or this service is
    /// verify-only.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, JwtError> {
        let key = self.encoding.as_ref().ok_or_else(|| {
            JwtError::new(
                JwtErrorKind::Signing,
                "this JwtService only verifies (no private key)",
            )
        })?;
        let mut value = serde_json::to_value(claims).map_err(|e| {
            JwtError::new(
                JwtErrorKind::Signing,
                format!("claims do not serialize: {e}"),
            )
        })?;
        let obj = value
            .as_object_mut()
            .ok_or_else(|| JwtError::new(JwtErrorKind::Signing, "claims must be a JSON object"))?;
        let now = now_secs();
        obj.entry("iat").or_insert(now.into());
        obj.entry("exp")
            .or_insert((now + self.expires_in.as_secs()).into());
        Ok(jsonwebtoken::encode(
            &Header::new(self.algorithm),
            &value,
            key,
        )?)
    }

    /// Verify a token's signature, `exp` (required) and `nbf` (when present), and decode
    /// its claims.
    ///
    /// # Errors
    /// A [`JwtError`] whose kind says why.
    pub fn verify<C: DeserializeOwned>(&self, token: &str) -> Result<C, JwtError> {
        let mut v = Validation::new(self.algorithm);
        v.validate_nbf = true;
        v.leeway = self.leeway.as_secs();
        v.set_required_spec_claims(&["exp"]);
        Ok(jsonwebtoken::decode::<C>(token, &self.decoding, &v)?.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> JwtService {
        JwtService::new(JwtOptions {
            secret: Some("0123456789abcdef0123".into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[derive(serde::Deserialize, Debug)]
    struct C {
        sub: String,
    }

    #[test]
    fn sign_verify_and_kinds() {
        let s = svc();
        let t = s.sign(&serde_json::json!({"sub": "u"})).unwrap();
        assert_eq!(s.verify::<C>(&t).unwrap().sub, "u");
        // tampered signature
        let dot = t.rfind('.').unwrap() + 1;
        let flipped = if &t[dot..=dot] == "A" { "B" } else { "A" };
        let bad = format!("{}{}{}", &t[..dot], flipped, &t[dot + 1..]);
        assert_eq!(
            s.verify::<C>(&bad).unwrap_err().kind,
            JwtErrorKind::InvalidSignature
        );
        // expired
        let t = s
            .sign(&serde_json::json!({"sub": "u", "exp": 1000}))
            .unwrap();
        assert_eq!(s.verify::<C>(&t).unwrap_err().kind, JwtErrorKind::Expired);
        // not yet valid
        let t = s
            .sign(&serde_json::json!({"sub": "u", "nbf": now_secs() + 3600}))
            .unwrap();
        assert_eq!(
            s.verify::<C>(&t).unwrap_err().kind,
            JwtErrorKind::NotYetValid
        );
        // other secret
        let other = JwtService::new(JwtOptions {
            secret: Some("another-secret-of-length".into()),
            ..Default::default()
        })
        .unwrap();
        let t = other.sign(&serde_json::json!({"sub": "u"})).unwrap();
        assert_eq!(
            s.verify::<C>(&t).unwrap_err().kind,
            JwtErrorKind::InvalidSignature
        );
        assert_eq!(
            s.verify::<C>("garbage").unwrap_err().kind,
            JwtErrorKind::Malformed
        );
        // missing claim type
        let t = s.sign(&serde_json::json!({"nosub": 1})).unwrap();
        assert_eq!(
            s.verify::<C>(&t).unwrap_err().kind,
            JwtErrorKind::InvalidClaims
        );
    }

    // A throwaway P-256 key pair generated for this test only.
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgdxbd+oxBR2mKVbTo
+BOT6a7tSeIjD/zcZDN4cD/T466hRANCAATgHF1gf/mhBRBy7f0z/cAzEKEc9AbF
LaFMgcxfWSEYed3g5nRWdK4euvEoQcLc24fOP1TlX93c+K5t+rKpZU+/
-----END PRIVATE KEY-----
";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE4BxdYH/5oQUQcu39M/3AMxChHPQG
xS2hTIHMX1khGHnd4OZ0VnSuHrrxKEHC3NuHzj9U5V/d3PiubfqyqWVPvw==
-----END PUBLIC KEY-----
";

    #[test]
    fn es256_verification_with_a_public_key() {
        let v = JwtService::verifier_from_pem(Algorithm::ES256, EC_PUBLIC.as_bytes()).unwrap();
        let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        let claims = serde_json::json!({"sub": "u9", "exp": now_secs() + 60});
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
        assert_eq!(v.verify::<C>(&token).unwrap().sub, "u9");
        // an HS256 token is refused by an ES256 verifier (no algorithm confusion)
        let hs = svc().sign(&serde_json::json!({"sub": "u"})).unwrap();
        assert_eq!(
            v.verify::<C>(&hs).unwrap_err().kind,
            JwtErrorKind::WrongAlgorithm
        );
        // and a verifier cannot sign
        assert_eq!(v.sign(&claims).unwrap_err().kind, JwtErrorKind::Signing);
    }

    #[test]
    fn config_errors() {
        let e = JwtService::new(JwtOptions {
            secret: None,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.kind, JwtErrorKind::MissingSecret);
        assert!(e.to_string().contains(SECRET_ENV));
        let e = JwtService::new(JwtOptions {
            secret: Some("short".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.kind, JwtErrorKind::InvalidKey);
        let e = JwtService::verifier_from_pem(Algorithm::RS256, b"not pem").unwrap_err();
        assert_eq!(e.kind, JwtErrorKind::InvalidKey);
    }
}
