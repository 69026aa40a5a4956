//! Who is calling: HS256 bearer tokens in the shape Supabase issues.
//!
//! `sub` is the user id (a UUID), `exp` is enforced, and an operator is a token whose
//! `app_metadata.keel_role` is `"operator"` — `app_metadata` is the part of a Supabase token its
//! user cannot edit. Only HS256 is accepted: a token that names another algorithm (`none`
//! included) is refused before its signature is looked at.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keel_kernel::ids::UserId;
use serde::{Deserialize, Serialize};

/// The shortest secret accepted: HS256 with less than 256 bits of key is guessable.
pub const SECRET_MIN_BYTES: usize = 32;

/// The role `app_metadata.keel_role` names for an operator.
pub const OPERATOR_ROLE: &str = "operator";

/// A verified caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`.
    pub user: UserId,
    /// Whether the token carries the operator role.
    pub operator: bool,
}

/// Why a token was refused; the message is safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("missing bearer token: send `Authorization: Bearer <JWT>`")]
    Missing,
    /// The header or the token is not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token names an algorithm other than HS256.
    #[error("token algorithm must be HS256")]
    WrongAlgorithm,
    /// The signature does not verify with the configured secret.
    #[error("token signature does not verify")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token has expired")]
    Expired,
    /// A claim is missing or has the wrong shape (`sub`, `exp`).
    #[error("token claim invalid: {0}")]
    Claim(String),
}

/// The claims Keel reads and writes; others in a Supabase token are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Supabase's database role (`authenticated` for a signed-in user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Claims only the identity provider sets.
    #[serde(default)]
    pub app_metadata: AppMetadata,
}

/// The provider-controlled part of the claims.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppMetadata {
    /// `"operator"` for an operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keel_role: Option<String>,
}

/// The key material for one secret.
#[derive(Clone)]
pub struct JwtKeys {
    decoding: DecodingKey,
    encoding: EncodingKey,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(***)")
    }
}

impl JwtKeys {
    /// Keys for an HS256 secret of at least [`SECRET_MIN_BYTES`] bytes.
    pub fn new(secret: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= SECRET_MIN_BYTES,
            "the JWT secret is {} bytes; at least {SECRET_MIN_BYTES} are required",
            secret.len()
        );
        Ok(JwtKeys {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
        })
    }

    /// Verifies the value of an `Authorization` header.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?;
        self.verify(token.trim())
    }

    /// Verifies a token and returns its caller.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| AuthError::Malformed(error.to_string()))?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::WrongAlgorithm);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |error| {
                use jsonwebtoken::errors::ErrorKind;
                match error.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
                    ErrorKind::MissingRequiredClaim(claim) => {
                        AuthError::Claim(format!("`{claim}` is required"))
                    }
                    ErrorKind::Json(inner) => AuthError::Claim(inner.to_string()),
                    _ => AuthError::Malformed(error.to_string()),
                }
            },
        )?;
        let user = UserId::parse(&data.claims.sub).map_err(|_| {
            AuthError::Claim(format!("`sub` must be a UUID, not {:?}", data.claims.sub))
        })?;
        let operator = data.claims.app_metadata.keel_role.as_deref() == Some(OPERATOR_ROLE);
        Ok(Caller { user, operator })
    }

    /// Mints a token for `user`, valid for `ttl_secs` seconds from `now_secs`.
    pub fn mint(&self, user: UserId, operator: bool, now_secs: i64, ttl_secs: i64) -> String {
        let claims = Claims {
            sub: user.to_string(),
            exp: now_secs + ttl_secs,
            iat: Some(now_secs),
            role: Some("authenticated".to_string()),
            app_metadata: AppMetadata {
                keel_role: operator.then(|| OPERATOR_ROLE.to_string()),
            },
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding of plain claims cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn a_minted_token_verifies_with_its_role() {
        let keys = JwtKeys::new(SECRET).unwrap();
        let user = UserId::new_random();
        let caller = keys.verify(&keys.mint(user, false, now(), 60)).unwrap();
        assert_eq!(
            caller,
            Caller {
                user,
                operator: false
            }
        );
        let caller = keys.verify(&keys.mint(user, true, now(), 60)).unwrap();
        assert!(caller.operator);
    }

    #[test]
    fn expired_forged_and_unsigned_tokens_are_refused() {
        let keys = JwtKeys::new(SECRET).unwrap();
        let user = UserId::new_random();
        let expired = keys.mint(user, false, now() - 120, 60);
        assert_eq!(keys.verify(&expired), Err(AuthError::Expired));

        let other = JwtKeys::new(b"another-secret-of-at-least-32-bytes!").unwrap();
        let forged = other.mint(user, true, now(), 60);
        assert_eq!(keys.verify(&forged), Err(AuthError::BadSignature));

        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body = format!(r#"{{"sub":"{user}","exp":{}}}"#, now() + 60);
        let unsigned = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(body)
        );
        assert!(keys.verify(&unsigned).is_err());
    }

    #[test]
    fn a_token_without_sub_or_with_a_non_uuid_sub_is_refused() {
        let keys = JwtKeys::new(SECRET).unwrap();
        let header = Header::new(Algorithm::HS256);
        let encoding = EncodingKey::from_secret(SECRET);
        let no_sub = serde_json::json!({ "exp": now() + 60 });
        let token = jsonwebtoken::encode(&header, &no_sub, &encoding).unwrap();
        assert!(matches!(keys.verify(&token), Err(AuthError::Claim(_))));
        let bad_sub = serde_json::json!({ "sub": "alice", "exp": now() + 60 });
        let token = jsonwebtoken::encode(&header, &bad_sub, &encoding).unwrap();
        assert!(matches!(keys.verify(&token), Err(AuthError::Claim(_))));
    }

    #[test]
    fn short_secrets_and_missing_headers_are_refused() {
        assert!(JwtKeys::new(b"short").is_err());
        let keys = JwtKeys::new(SECRET).unwrap();
        assert_eq!(keys.verify_header(None), Err(AuthError::Missing));
        assert_eq!(
            keys.verify_header(Some("Basic abc")),
            Err(AuthError::Missing)
        );
    }
}
