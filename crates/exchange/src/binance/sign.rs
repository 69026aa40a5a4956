//! Request signing: HMAC-SHA256 (hex) and Ed25519 (base64) over the parameter string.

use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer as _, SigningKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How requests are signed: the key type Binance issued.
#[derive(Clone)]
pub enum Signer {
    /// An HMAC key: the signature is the hex HMAC-SHA256 of the payload under the secret.
    Hmac {
        /// The secret key.
        secret: String,
    },
    /// An Ed25519 key: the signature is the base64 Ed25519 signature of the payload.
    Ed25519 {
        /// The private key.
        key: Box<SigningKey>,
    },
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs.
        match self {
            Signer::Hmac { .. } => f.write_str("Signer::Hmac(..)"),
            Signer::Ed25519 { .. } => f.write_str("Signer::Ed25519(..)"),
        }
    }
}

impl Signer {
    /// An Ed25519 signer from a PKCS#8 PEM private key (as Binance's key generator writes).
    pub fn ed25519_from_pem(pem: &str) -> anyhow::Result<Signer> {
        let key = SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| anyhow::anyhow!("reading the Ed25519 private key: {e}"))?;
        Ok(Signer::Ed25519 { key: Box::new(key) })
    }

    /// The signature of `payload` (the query string, followed by the body if any).
    pub fn sign(&self, payload: &str) -> String {
        match self {
            Signer::Hmac { secret } => hmac_sha256_hex(secret, payload),
            Signer::Ed25519 { key } => base64::engine::general_purpose::STANDARD
                .encode(key.sign(payload.as_bytes()).to_bytes()),
        }
    }
}

/// The hex HMAC-SHA256 of `payload` under `secret`.
pub fn hmac_sha256_hex(secret: &str, payload: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(payload.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// True when `signature` is `payload` signed by the Ed25519 key whose public half is `public`.
pub fn ed25519_verify(
    public: &ed25519_dalek::VerifyingKey,
    payload: &str,
    signature: &str,
) -> bool {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(signature) else {
        return false;
    };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(&bytes) else {
        return false;
    };
    public.verify_strict(payload.as_bytes(), &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Binance's USDⓈ-M Futures API documentation ("SIGNED Endpoint
    /// Examples for POST /fapi/v1/order - HMAC Keys").
    #[test]
    fn hmac_signature_matches_binances_documented_example() {
        let secret = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9";
        let query = "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000\
                     &timeInForce=GTC&recvWindow=5000&timestamp=1591702613943";
        assert_eq!(
            Signer::Hmac {
                secret: secret.to_owned()
            }
            .sign(query),
            "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"
        );
    }

    #[test]
    fn ed25519_signature_verifies_and_a_changed_payload_does_not() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = key.verifying_key();
        let signer = Signer::Ed25519 { key: Box::new(key) };
        let signature = signer.sign("symbol=BTCUSDT&timestamp=1");
        assert!(ed25519_verify(
            &public,
            "symbol=BTCUSDT&timestamp=1",
            &signature
        ));
        assert!(!ed25519_verify(
            &public,
            "symbol=BTCUSDT&timestamp=2",
            &signature
        ));
    }
}
