//! Stripe's webhooks (docs/partners.md#stripes-webhooks): the `Stripe-Signature` check, the few fields of an event
//! the intake needs, and the message that carries an event to the worker.
//!
//! The signature scheme is Stripe's own: the header `t=<unix>,v1=<hex>[,v1=<hex>…]` (other
//! schemes, such as the test-only `v0`, are ignored), where each `v1` is the hex HMAC-SHA256,
//! keyed with the whole endpoint secret (`whsec_…`, prefix included), of `"<t>.<raw body>"`.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The `type` property of a Stripe event message on the jobs exchange.
///
/// Body: the Stripe event JSON exactly as Stripe sent it (the bytes the signature covered), so
/// the worker parses it with async-stripe's own `Event`. `message_id`: the Stripe event id.
/// Headers: `stripe_event_type` (the event's `type`), `stripe_event_created` (its `created`,
/// unix seconds), `stripe_livemode` (bool), `received_at` (RFC 3339, when the intake took it).
pub const STRIPE_EVENT_MESSAGE_TYPE: &str = "autorenew.stripe_event.v1";

/// The Stripe event types the worker acts on (docs/partners.md#the-rest-of-an-auto-renewals-life): a webhook endpoint needs no others.
pub const ACTED_ON: &[&str] = &[
    "invoice.paid",
    "invoice.payment_failed",
    "customer.subscription.updated",
    "customer.subscription.deleted",
];

// The header and the signature as a sender makes them live in the `signatures` crate, which
// loadgen shares; here, where the intake and the tools have always found them.
pub use signatures::stripe::{SIGNATURE_HEADER, sign};

/// Why a delivery's signature does not verify. The intake answers each the same way (400
/// `WEBHOOK_SIGNATURE_INVALID`); the kinds are for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header")]
    Missing,
    #[error("the Stripe-Signature header has no readable timestamp `t`")]
    NoTimestamp,
    #[error("the Stripe-Signature header has no `v1` signature")]
    NoSignature,
    #[error(
        "the signature's timestamp is {age_secs} s away from now, over the {tolerance_secs} s tolerance"
    )]
    OutsideTolerance { age_secs: u64, tolerance_secs: u64 },
    #[error("no `v1` signature matches any configured secret")]
    NoMatch,
}

/// The webhook endpoint's signing secrets (several during a secret roll) and how far a
/// signature's timestamp may be from now. None configured: the endpoint is off.
#[derive(Debug, Clone)]
pub struct WebhookSecrets {
    secrets: Vec<SecretString>,
    tolerance_secs: u64,
}

impl WebhookSecrets {
    pub fn new(secrets: Vec<SecretString>, tolerance_secs: u64) -> Self {
        WebhookSecrets {
            secrets,
            tolerance_secs,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// [`verify_signature`] against these secrets.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<i64, SignatureError> {
        verify_signature(header, body, &self.secrets, now, self.tolerance_secs)
    }
}

/// Checks a delivery's `Stripe-Signature` header against the raw body and every configured
/// secret (several during a secret roll: any may match). `now` and the header's `t` are unix
/// seconds; a `t` further than `tolerance_secs` from `now`, in the past or the future, is
/// refused (a replayed delivery). Returns the verified timestamp.
pub fn verify_signature(
    header: Option<&str>,
    body: &[u8],
    secrets: &[SecretString],
    now: i64,
    tolerance_secs: u64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for element in header.split(',') {
        let Some((key, value)) = element.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = value.parse::<i64>().ok(),
            // A value that is not hex cannot match; skip it rather than refuse the others.
            "v1" => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::NoTimestamp)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    let age_secs = now.abs_diff(timestamp);
    if age_secs > tolerance_secs {
        return Err(SignatureError::OutsideTolerance {
            age_secs,
            tolerance_secs,
        });
    }
    let signed_prefix = format!("{timestamp}.");
    for secret in secrets {
        // HMAC takes a key of any length; the error arm cannot happen.
        let Ok(mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
            continue;
        };
        let mut mac = mac;
        mac.update(signed_prefix.as_bytes());
        mac.update(body);
        // `verify_slice` compares in constant time; each try needs its own copy of the state.
        if signatures
            .iter()
            .any(|signature| mac.clone().verify_slice(signature).is_ok())
        {
            return Ok(timestamp);
        }
    }
    Err(SignatureError::NoMatch)
}

/// What the intake reads of a verified event: enough to de-duplicate and route it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    /// `evt_…`; Stripe delivers one event more than once, always with the same id.
    pub id: String,
    /// `invoice.paid`, `customer.subscription.updated`, …
    pub kind: String,
    /// When Stripe created the event (unix seconds).
    pub created: i64,
    pub livemode: bool,
}

/// A signed body that is not a Stripe event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the event is not UTF-8 JSON")]
    NotJson,
    #[error("the body is not a Stripe event (id, type, created, livemode, data, pending_webhooks)")]
    NotAnEvent,
    #[error("the event id `{0}` is not a Stripe event id (evt_…)")]
    BadId(String),
}

impl EventSummary {
    /// Parses the event with async-stripe's own `Event` type (its miniserde reading: the crate
    /// is built without serde), so what the intake accepts is what the worker can read.
    pub fn parse(body: &[u8]) -> Result<Self, EventError> {
        let text = std::str::from_utf8(body).map_err(|_| EventError::NotJson)?;
        let event: stripe_shared::Event =
            miniserde::json::from_str(text).map_err(|_| EventError::NotAnEvent)?;
        let id = event.id.as_str().to_owned();
        // The id becomes a Redis key and an AMQP message id: keep it to Stripe's own alphabet.
        let well_formed = id.len() <= 255
            && id.starts_with("evt_")
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !well_formed {
            return Err(EventError::BadId(id.chars().take(80).collect()));
        }
        Ok(EventSummary {
            id,
            kind: event.type_.as_str().to_owned(),
            created: event.created,
            livemode: event.livemode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed `invoice.paid` event in the shape of Stripe's documented example event.
    const EVENT: &[u8] = br#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","api_version":"2019-02-19","created":1686089970,"data":{"object":{"id":"in_1NG8Dt2eZvKYlo2Cq5sC2gq8","object":"invoice","billing_reason":"subscription_cycle","status":"paid"}},"livemode":false,"pending_webhooks":0,"request":{"id":null,"idempotency_key":null},"type":"invoice.paid"}"#;
    const T: i64 = 1_686_089_970;
    // Known answers, computed once outside this code with Python's standard library:
    //   hmac.new(b"whsec_test_secret", b"1686089970." + EVENT, hashlib.sha256).hexdigest()
    const V1_TEST: &str = "9d96b6fdc50518b53b25d3c34ebf607048e34853d077cd8708e231c97a51660b";
    //   hmac.new(b"whsec_rolled_secret", b"1686089970." + EVENT, hashlib.sha256).hexdigest()
    const V1_ROLLED: &str = "1a2a3e819c84602794d12c58ee40e0d6ea770bbc608e08fa07aae1d326610a31";
    // Stripe's documentation shows a `v0` (test-mode) signature beside `v1`; it is ignored.
    const V0: &str = "6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39";

    fn secrets(values: &[&str]) -> Vec<SecretString> {
        values.iter().map(|s| SecretString::from(*s)).collect()
    }

    #[test]
    fn a_known_answer_verifies() {
        let header = format!("t={T},v1={V1_TEST},v0={V0}");
        let verified = verify_signature(
            Some(&header),
            EVENT,
            &secrets(&["whsec_test_secret"]),
            T + 10,
            300,
        );
        assert_eq!(verified, Ok(T));
    }

    #[test]
    fn any_configured_secret_may_match_during_a_roll() {
        let header = format!("t={T},v1={V1_ROLLED}");
        let both = secrets(&["whsec_test_secret", "whsec_rolled_secret"]);
        assert_eq!(verify_signature(Some(&header), EVENT, &both, T, 300), Ok(T));
        let old_only = secrets(&["whsec_test_secret"]);
        assert_eq!(
            verify_signature(Some(&header), EVENT, &old_only, T, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn any_v1_in_the_header_may_match() {
        let header = format!("t={T},v1={},v1={V1_TEST}", "00".repeat(32));
        let verified = verify_signature(
            Some(&header),
            EVENT,
            &secrets(&["whsec_test_secret"]),
            T,
            300,
        );
        assert_eq!(verified, Ok(T));
    }

    #[test]
    fn a_changed_body_does_not_verify() {
        let header = format!("t={T},v1={V1_TEST}");
        let mut body = EVENT.to_vec();
        body.push(b' ');
        let verified = verify_signature(
            Some(&header),
            &body,
            &secrets(&["whsec_test_secret"]),
            T,
            300,
        );
        assert_eq!(verified, Err(SignatureError::NoMatch));
    }

    #[test]
    fn a_timestamp_outside_the_tolerance_is_refused_either_side() {
        let header = format!("t={T},v1={V1_TEST}");
        let secret = secrets(&["whsec_test_secret"]);
        assert!(verify_signature(Some(&header), EVENT, &secret, T + 300, 300).is_ok());
        assert_eq!(
            verify_signature(Some(&header), EVENT, &secret, T + 301, 300),
            Err(SignatureError::OutsideTolerance {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert!(matches!(
            verify_signature(Some(&header), EVENT, &secret, T - 301, 300),
            Err(SignatureError::OutsideTolerance { .. })
        ));
    }

    #[test]
    fn broken_headers_are_refused_with_their_reason() {
        let secret = secrets(&["whsec_test_secret"]);
        let check = |header: Option<&str>| verify_signature(header, EVENT, &secret, T, 300);
        assert_eq!(check(None), Err(SignatureError::Missing));
        assert_eq!(check(Some("")), Err(SignatureError::NoTimestamp));
        assert_eq!(
            check(Some(&format!("v1={V1_TEST}"))),
            Err(SignatureError::NoTimestamp)
        );
        assert_eq!(
            check(Some(&format!("t=soon,v1={V1_TEST}"))),
            Err(SignatureError::NoTimestamp)
        );
        assert_eq!(
            check(Some(&format!("t={T},v0={V0}"))),
            Err(SignatureError::NoSignature)
        );
        assert_eq!(
            check(Some(&format!("t={T},v1=zz"))),
            Err(SignatureError::NoSignature)
        );
    }

    #[test]
    fn no_secret_verifies_nothing() {
        let header = format!("t={T},v1={V1_TEST}");
        assert_eq!(
            verify_signature(Some(&header), EVENT, &[], T, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn an_event_is_read_with_async_stripes_event_type() {
        let summary = EventSummary::parse(EVENT).expect("a Stripe event");
        assert_eq!(
            summary,
            EventSummary {
                id: "evt_1NG8Du2eZvKYlo2CUI79vXWy".into(),
                kind: "invoice.paid".into(),
                created: T,
                livemode: false,
            }
        );
    }

    #[test]
    fn bodies_that_are_not_events_are_refused() {
        assert_eq!(EventSummary::parse(b"\xff"), Err(EventError::NotJson));
        assert_eq!(EventSummary::parse(b"{}"), Err(EventError::NotAnEvent));
        assert_eq!(EventSummary::parse(b"[1]"), Err(EventError::NotAnEvent));
        let bad_id = String::from_utf8_lossy(EVENT).replace("evt_1NG8", "evt_{x}");
        assert!(matches!(
            EventSummary::parse(bad_id.as_bytes()),
            Err(EventError::BadId(_))
        ));
    }
}
