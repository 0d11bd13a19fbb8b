//! The partner push's signature, Standard Webhooks 1.0 (docs/partners.md#what-arrives), as the notifier makes
//! it and a partner checks it: the signed content is `"<webhook-id>.<webhook-timestamp>.<body>"`;
//! each `v1` signature is the base64 HMAC-SHA256 of it, keyed with the bytes a secret (`whsec_` +
//! base64) encodes, one per secret, space-separated, so a partner rolls its secret without a
//! gap. The `webhook-id` is derived from the CloudEvent `id`. The service re-exports it from
//! `autorenew::domain::push`, with the receiver's check.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// What every push secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// The key bytes a secret may hold (docs/partners.md#what-arrives).
pub const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// The key of one push secret; it cannot be printed.
pub struct PushSecret(SecretSlice<u8>);

impl std::fmt::Debug for PushSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PushSecret(…)")
    }
}

impl Clone for PushSecret {
    fn clone(&self) -> Self {
        PushSecret(SecretSlice::from(self.0.expose_secret().to_vec()))
    }
}

impl PushSecret {
    /// Reads `whsec_<base64 of 24 to 64 bytes>`. The error never repeats the secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("must start with `{SECRET_PREFIX}`"))?;
        let key = STANDARD
            .decode(encoded.trim())
            .map_err(|_| format!("the part after `{SECRET_PREFIX}` must be base64"))?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(format!(
                "must encode {} to {} bytes, not {}",
                KEY_BYTES.start(),
                KEY_BYTES.end(),
                key.len()
            ));
        }
        Ok(PushSecret(SecretSlice::from(key)))
    }

    /// The `whsec_…` text of a key (the receiver and the tests make their secrets with it).
    pub fn encode(key: &[u8]) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
    }

    /// The HMAC keyed with this secret (the receiver's check uses it too).
    pub fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        Hmac::<Sha256>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"))
    }
}

/// The `webhook-id` of an event: `msg_` and 32 hex digits of the SHA-256 of its CloudEvent `id`.
/// The same on every attempt, resend and recovery of the event, on any process; two events
/// (two CloudEvent ids) never share one.
pub fn webhook_id(event_id: &str) -> String {
    let digest = Sha256::digest(event_id.as_bytes());
    format!("msg_{}", hex::encode(&digest[..16]))
}

/// The `webhook-signature` header: `v1,<base64>` for each secret, space-separated.
pub fn signature(secrets: &[PushSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| {
            format!(
                "v1,{}",
                STANDARD.encode(sign_one(secret, id, timestamp, body))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn sign_one(secret: &PushSecret, id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut mac = secret.mac();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}
