//! Exchange credentials per profile, sealed with XChaCha20-Poly1305 under a key from the
//! environment (`KEEL_CREDENTIALS_KEY`: 32 bytes as 64 hex digits). The associated data binds a
//! sealed secret to its profile, owner and exchange, so a row copied elsewhere does not open.
//! The API stores and replaces credentials and says whether they are set; it never returns them,
//! and no `Debug` output shows them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use keel_kernel::ids::{ProfileId, UserId};
use keel_kernel::store::SealedCredentials;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::errors::{ApiJson, ApiPath};
use super::profiles::found;
use super::{ApiError, ApiState, Auth, ErrorBody};

/// The environment variable holding the key.
pub const CREDENTIALS_KEY_ENV: &str = "KEEL_CREDENTIALS_KEY";
/// The longest API key or secret accepted, in bytes.
pub const CREDENTIAL_BYTES_MAX: usize = 512;

/// The key credentials are sealed with.
#[derive(Clone)]
pub struct CredentialsKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for CredentialsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialsKey(***)")
    }
}

/// An exchange account's secret, in clear: only inside the host, never in a response or a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeSecret {
    /// The exchange's API key.
    pub api_key: String,
    /// The exchange's API secret.
    pub api_secret: String,
}

impl std::fmt::Debug for ExchangeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExchangeSecret(***)")
    }
}

impl CredentialsKey {
    /// A key from 64 hex digits.
    pub fn from_hex(text: &str) -> anyhow::Result<Self> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| anyhow::anyhow!("the credentials key must be 64 hex digits"))?;
        anyhow::ensure!(
            bytes.len() == 32,
            "the credentials key must be 32 bytes (64 hex digits), not {}",
            bytes.len()
        );
        Ok(CredentialsKey {
            cipher: XChaCha20Poly1305::new_from_slice(&bytes).expect("a 32-byte key"),
        })
    }

    /// The key in `KEEL_CREDENTIALS_KEY`, if set.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        match std::env::var(CREDENTIALS_KEY_ENV) {
            Ok(text) => Self::from_hex(&text).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => anyhow::bail!("{CREDENTIALS_KEY_ENV}: {e}"),
        }
    }

    /// A fresh random key, as 64 hex digits.
    pub fn generate_hex() -> String {
        hex::encode(XChaCha20Poly1305::generate_key(&mut OsRng))
    }

    fn aad(profile: ProfileId, user: UserId, exchange: &str) -> Vec<u8> {
        format!("keel-credentials/v1/{profile}/{user}/{exchange}").into_bytes()
    }

    /// Seals `secret` for (profile, user, exchange).
    pub fn seal(
        &self,
        profile: ProfileId,
        user: UserId,
        exchange: &str,
        secret: &ExchangeSecret,
    ) -> SealedCredentials {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let plain = serde_json::to_vec(secret).expect("strings serialize");
        let aad = Self::aad(profile, user, exchange);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption of a small message cannot fail");
        SealedCredentials {
            exchange: exchange.to_owned(),
            nonce: nonce.to_vec(),
            ciphertext,
            updated_at_ms: 0,
        }
    }

    /// Opens credentials sealed for (profile, user); fails on another key, another row's data or
    /// tampering.
    pub fn open(
        &self,
        profile: ProfileId,
        user: UserId,
        sealed: &SealedCredentials,
    ) -> anyhow::Result<ExchangeSecret> {
        anyhow::ensure!(
            sealed.nonce.len() == 24,
            "sealed credentials have a bad nonce"
        );
        let aad = Self::aad(profile, user, &sealed.exchange);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                anyhow::anyhow!("credentials of profile {profile} do not open with this key")
            })?;
        Ok(serde_json::from_slice(&plain)?)
    }
}

pub(super) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(
        read_credentials,
        put_credentials,
        delete_credentials
    ))
}

/// Body of `PUT /api/v1/profiles/{profile_id}/credentials`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCredentials {
    /// The exchange: `binance-usdm` or `paper`.
    pub exchange: String,
    /// The exchange's API key, 1 to 512 bytes.
    #[schema(min_length = 1, max_length = 512)]
    pub api_key: String,
    /// The exchange's API secret, 1 to 512 bytes.
    #[schema(min_length = 1, max_length = 512)]
    pub api_secret: String,
}

impl std::fmt::Debug for PutCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutCredentials")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

/// Binance USDⓈ-M futures: the exchange `keel serve` trades on.
pub const BINANCE_USDM: &str = "binance-usdm";

/// The exchanges credentials may be stored for.
pub const EXCHANGES: [&str; 2] = [BINANCE_USDM, "paper"];

/// Whether a profile has credentials; never the credentials themselves.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialsView {
    /// The profile.
    #[schema(value_type = String, format = Uuid)]
    pub profile_id: ProfileId,
    /// The exchange they are for.
    pub exchange: String,
    /// Always true: a profile without credentials answers 404.
    pub configured: bool,
    /// Last set, ms since the epoch.
    pub updated_at_ms: i64,
}

fn check(body: &PutCredentials) -> Result<(), ApiError> {
    if !EXCHANGES.contains(&body.exchange.as_str()) {
        return Err(ApiError::Unprocessable(format!(
            "exchange must be one of {EXCHANGES:?}, got {:?}",
            body.exchange
        )));
    }
    for (what, value) in [("api_key", &body.api_key), ("api_secret", &body.api_secret)] {
        if value.trim().is_empty() || value.len() > CREDENTIAL_BYTES_MAX {
            return Err(ApiError::Unprocessable(format!(
                "{what} must be 1 to {CREDENTIAL_BYTES_MAX} bytes and not blank"
            )));
        }
    }
    Ok(())
}

/// Says whether the profile has credentials, for which exchange and since when.
#[utoipa::path(get, path = "/profiles/{profile_id}/credentials", tag = "credentials",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 200, body = CredentialsView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn read_credentials(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<Json<CredentialsView>, ApiError> {
    let profile = ProfileId::from_uuid(profile);
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, false).await?;
    let sealed = tx.credentials(profile).await?;
    tx.commit().await?;
    let sealed = sealed
        .ok_or_else(|| ApiError::NotFound(format!("profile {profile} has no credentials")))?;
    Ok(Json(CredentialsView {
        profile_id: profile,
        exchange: sealed.exchange,
        configured: true,
        updated_at_ms: sealed.updated_at_ms,
    }))
}

/// Stores (or replaces) the profile's exchange credentials, sealed.
#[utoipa::path(put, path = "/profiles/{profile_id}/credentials", tag = "credentials",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    request_body = PutCredentials,
    responses((status = 200, body = CredentialsView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn put_credentials(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
    ApiJson(body): ApiJson<PutCredentials>,
) -> Result<Json<CredentialsView>, ApiError> {
    let profile = ProfileId::from_uuid(profile);
    check(&body)?;
    let secret = ExchangeSecret {
        api_key: body.api_key,
        api_secret: body.api_secret,
    };
    let sealed = state
        .credentials
        .seal(profile, caller.user, &body.exchange, &secret);
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, true).await?;
    tx.put_credentials(profile, &sealed).await?;
    let stored = tx.credentials(profile).await?.expect("just stored");
    tx.commit().await?;
    state.control.account_changed(profile);
    Ok(Json(CredentialsView {
        profile_id: profile,
        exchange: stored.exchange,
        configured: true,
        updated_at_ms: stored.updated_at_ms,
    }))
}

/// Removes the profile's credentials.
#[utoipa::path(delete, path = "/profiles/{profile_id}/credentials", tag = "credentials",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 204, description = "removed"), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn delete_credentials(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let profile = ProfileId::from_uuid(profile);
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, true).await?;
    if !tx.delete_credentials(profile).await? {
        return Err(ApiError::NotFound(format!(
            "profile {profile} has no credentials"
        )));
    }
    tx.commit().await?;
    state.control.account_changed(profile);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_credentials_open_only_for_their_row_and_key() {
        let key = CredentialsKey::from_hex(&CredentialsKey::generate_hex()).unwrap();
        let (profile, user) = (ProfileId::new_random(), UserId::new_random());
        let secret = ExchangeSecret {
            api_key: "key-123".into(),
            api_secret: "secret-456".into(),
        };
        let sealed = key.seal(profile, user, "paper", &secret);
        assert!(!String::from_utf8_lossy(&sealed.ciphertext).contains("secret-456"));
        assert_eq!(key.open(profile, user, &sealed).unwrap(), secret);
        assert!(key.open(ProfileId::new_random(), user, &sealed).is_err());
        assert!(key.open(profile, UserId::new_random(), &sealed).is_err());
        let other = CredentialsKey::from_hex(&CredentialsKey::generate_hex()).unwrap();
        assert!(other.open(profile, user, &sealed).is_err());
        assert_eq!(format!("{secret:?}"), "ExchangeSecret(***)");
        assert!(!format!("{sealed:?}").contains("secret"));
    }

    #[test]
    fn a_key_must_be_32_bytes_of_hex() {
        assert!(CredentialsKey::from_hex("abcd").is_err());
        assert!(CredentialsKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(CredentialsKey::from_hex(&"ab".repeat(32)).is_ok());
    }
}
