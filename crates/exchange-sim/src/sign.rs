//! The simulator's own check of Binance request signatures, written from Binance's
//! documentation with the `hmac` and `ed25519-dalek` crates directly, not with the adapter's
//! signer: a mistake made on the adapter's side fails here.
//!
//! Binance signs `totalParams`, the query string followed by the body: HMAC-SHA256 as lowercase
//! or uppercase hex, or Ed25519 as base64 (URL-encoded on the wire; the gate decoded it).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Whether `signature` (hex) is the HMAC-SHA256 of `payload` under `secret`. The comparison
/// takes the same time whatever the signature, as a server's should.
pub(crate) fn hmac_sha256_valid(secret: &str, payload: &str, signature: &str) -> bool {
    let Ok(signature) = hex::decode(signature) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(payload.as_bytes());
    mac.verify_slice(&signature).is_ok()
}

/// Whether `signature` (base64) is `payload` signed by the Ed25519 key whose public half is
/// `public`.
pub(crate) fn ed25519_valid(
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

    /// Binance's worked example ("SIGNED Endpoint Examples for POST /fapi/v1/order - HMAC
    /// Keys"), as the documentation prints it.
    const SECRET: &str = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9";
    const PAYLOAD: &str = "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000\
                           &timeInForce=GTC&recvWindow=5000&timestamp=1591702613943";
    const SIGNATURE: &str = "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9";

    #[test]
    fn binances_documented_hmac_example_verifies() {
        assert!(hmac_sha256_valid(SECRET, PAYLOAD, SIGNATURE));
        assert!(hmac_sha256_valid(
            SECRET,
            PAYLOAD,
            &SIGNATURE.to_uppercase()
        ));
    }

    #[test]
    fn a_changed_payload_secret_or_signature_does_not_verify() {
        let changed = PAYLOAD.replace("price=9000", "price=9001");
        assert!(!hmac_sha256_valid(SECRET, &changed, SIGNATURE));
        assert!(!hmac_sha256_valid("another secret", PAYLOAD, SIGNATURE));
        assert!(!hmac_sha256_valid(SECRET, PAYLOAD, &SIGNATURE[..62]));
        assert!(!hmac_sha256_valid(SECRET, PAYLOAD, "not hex"));
    }

    /// RFC 8032, section 7.1, test 2: a one-byte message (0x72, `r`).
    #[test]
    fn the_rfc_8032_ed25519_test_vector_verifies_and_a_changed_message_does_not() {
        let public: [u8; 32] =
            hex::decode("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
                .unwrap()
                .try_into()
                .unwrap();
        let public = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
        let signature = hex::decode(
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        )
        .unwrap();
        let signature = base64::engine::general_purpose::STANDARD.encode(signature);
        assert!(ed25519_valid(&public, "r", &signature));
        assert!(!ed25519_valid(&public, "s", &signature));
        assert!(!ed25519_valid(&public, "r", "not base64!"));
    }
}
