//! The partner push (docs/partners.md#what-arrives): Standard Webhooks 1.0 signing of a result event, the
//! `webhook-id` derived from the CloudEvent `id`, the push secrets, and the event patterns a
//! partner subscribes with. Pure: the notifier sends, the receiver and the tests verify.
//!
//! The signed content is `"<webhook-id>.<webhook-timestamp>.<body>"`; each `v1` signature is
//! the base64 HMAC-SHA256 of it, keyed with the bytes a secret (`whsec_` + base64) encodes. One
//! signature per secret, space-separated, so a partner rolls its secret without a gap.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::Mac;

// The signing itself is shared with loadgen, which signs as the notifier does without
// depending on the service (docs/design.md, "Crates").
pub use signatures::push::{
    ID_HEADER, KEY_BYTES, PushSecret, SECRET_PREFIX, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature,
    webhook_id,
};

/// The routing-key patterns a partner gets when it names none: every result and lifecycle event.
pub const ALL_EVENTS: &str = "subscription.*";
/// The type of the event `autorenew push test` sends.
pub const PING_TYPE: &str = "autorenew.ping";

/// Whether `id` has the shape [`webhook_id`] gives (partners' calls name one).
pub fn is_webhook_id(id: &str) -> bool {
    id.strip_prefix("msg_").is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Why a push does not verify (the receiver's check).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the timestamp is {age_secs} s away from now, over the {tolerance_secs} s tolerance")]
    OutsideTolerance { age_secs: u64, tolerance_secs: u64 },
    #[error("no v1 signature matches")]
    NoMatch,
}

/// Checks a push as a receiver does: the timestamp within `tolerance_secs` of `now`, and one
/// `v1` signature of the header matching one of `secrets` (compared in constant time).
pub fn verify(
    secrets: &[PushSecret],
    id: &str,
    timestamp: i64,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: u64,
) -> Result<(), VerifyError> {
    let age_secs = now.abs_diff(timestamp);
    if age_secs > tolerance_secs {
        return Err(VerifyError::OutsideTolerance {
            age_secs,
            tolerance_secs,
        });
    }
    let given: Vec<Vec<u8>> = header
        .split(' ')
        .filter_map(|part| part.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .collect();
    for secret in secrets {
        let mut mac = secret.mac();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        if given.iter().any(|candidate| {
            bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &candidate[..]))
        }) {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

/// Checks one event pattern: dot-separated words of `[A-Za-z0-9_-]`, or `*` (one word) and `#`
/// (any words), as RabbitMQ's topic bindings read them, e.g. `subscription.*` or
/// `subscription.renewed`.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let ok = !pattern.is_empty()
        && pattern.split('.').all(|word| {
            word == "*"
                || word == "#"
                || (!word.is_empty()
                    && word
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{pattern}` is not a routing-key pattern like `subscription.*` or `subscription.renewed`"
        ))
    }
}

/// The binding key of a partner's pattern on the results exchange: the pattern names the event
/// (`subscription.renewed`), the last word of every routing key is the partner.
pub fn binding_key(pattern: &str, partner: &str) -> String {
    format!("{pattern}.{partner}")
}

/// What the notifier reads of an event body: just enough to log, index and measure it. The body
/// itself is sent as it came.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct EventHead {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The payId.
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub time: String,
}

impl EventHead {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let head: EventHead =
            serde_json::from_slice(body).map_err(|e| format!("not a CloudEvent: {e}"))?;
        if head.id.is_empty() {
            return Err("the CloudEvent has no id".into());
        }
        Ok(head)
    }
}

/// Where one event stands with its partner (docs/partners.md#your-calls-about-your-pushes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not delivered yet: attempts go on, or wait for the partner's push to be enabled.
    Pending,
    /// A 2xx came.
    Delivered,
    /// The schedule is spent without a 2xx; kept for recovery.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// What started an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The first attempt or a retry of the schedule.
    Scheduled,
    /// `POST /resendNotification`: one attempt now, outside the schedule.
    Resend,
    /// `POST /recoverNotifications`: one attempt now for each event of a window without a 2xx.
    Recover,
}

impl Trigger {
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Scheduled => "scheduled",
            Trigger::Resend => "resend",
            Trigger::Recover => "recover",
        }
    }

    pub fn parse(text: Option<&str>) -> Self {
        match text {
            Some("resend") => Trigger::Resend,
            Some("recover") => Trigger::Recover,
            _ => Trigger::Scheduled,
        }
    }
}

/// One attempt of the log (docs/partners.md#your-calls-about-your-pushes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttemptRecord {
    /// RFC 3339, when it was sent.
    pub at: String,
    /// None when no answer came.
    pub http_status: Option<u16>,
    /// `timeout`, `connect`, `tls`, `blocked`, `other`, or None when an answer came.
    pub error: Option<String>,
    pub duration_ms: u64,
    pub trigger: String,
}

/// One event with its partner: what `/queryNotifications` answers for each.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Notification {
    pub webhook_id: String,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub time: String,
    pub status: DeliveryStatus,
    pub attempts: Vec<AttemptRecord>,
}

/// The `autorenew.ping` CloudEvent `autorenew push test` sends (`id`: a fresh one each time).
pub fn ping_event(id: &str, partner: &str, source: &str, now_rfc3339: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": PING_TYPE,
        "subject": "",
        "time": now_rfc3339,
        "datacontenttype": "application/json",
        "data": {"partnerCode": partner},
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard Webhooks' own example: secret, id, timestamp, body and signature, from the
    /// specification's reference libraries' tests.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_signature_matches_the_specifications_example() {
        // The example's key is 24 bytes.
        let secret = PushSecret::parse(SPEC_SECRET).expect("the example secret");
        assert_eq!(
            signature(&[secret], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn every_secret_signs_and_any_one_verifies() {
        let old = PushSecret::parse(&PushSecret::encode(&[1; 32])).expect("old");
        let new = PushSecret::parse(&PushSecret::encode(&[2; 48])).expect("new");
        let header = signature(&[new.clone(), old.clone()], "msg_1", 100, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|part| part.starts_with("v1,")));
        assert_eq!(
            verify(
                std::slice::from_ref(&old),
                "msg_1",
                100,
                &header,
                b"{}",
                100,
                300
            ),
            Ok(())
        );
        assert_eq!(
            verify(&[new], "msg_1", 100, &header, b"{}", 100, 300),
            Ok(())
        );
        assert_eq!(
            verify(
                std::slice::from_ref(&old),
                "msg_1",
                100,
                &header,
                b"{ }",
                100,
                300
            ),
            Err(VerifyError::NoMatch)
        );
        assert!(matches!(
            verify(&[old], "msg_1", 100, &header, b"{}", 1_000, 300),
            Err(VerifyError::OutsideTolerance { .. })
        ));
    }

    #[test]
    fn a_secret_must_be_whsec_and_base64_of_24_to_64_bytes() {
        assert!(PushSecret::parse(&PushSecret::encode(&[3; 64])).is_ok());
        assert!(PushSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(PushSecret::parse("whsec_not base64!").is_err());
        let short = format!("whsec_{}", STANDARD.encode([7u8; 23]));
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert!(PushSecret::parse(&short).unwrap_err().contains("24 to 64"));
        assert!(PushSecret::parse(&long).is_err());
        let error = PushSecret::parse("whsec_???").unwrap_err();
        assert!(
            !error.contains("???"),
            "the error repeats the secret: {error}"
        );
    }

    #[test]
    fn the_webhook_id_is_stable_per_event_and_differs_between_events() {
        let a = webhook_id("P1:succeeded");
        assert_eq!(a, webhook_id("P1:succeeded"));
        assert_ne!(a, webhook_id("P1:failed"));
        assert!(is_webhook_id(&a), "{a}");
        assert!(!is_webhook_id("msg_xyz"));
    }

    #[test]
    fn patterns_are_topic_patterns_bound_per_partner() {
        assert!(check_pattern("subscription.*").is_ok());
        assert!(check_pattern("subscription.renewal_failed").is_ok());
        assert!(check_pattern("#").is_ok());
        assert!(check_pattern("subscription..x").is_err());
        assert!(check_pattern("").is_err());
        assert!(check_pattern("a b").is_err());
        assert_eq!(binding_key("subscription.*", "P1"), "subscription.*.P1");
    }

    #[test]
    fn the_event_head_needs_an_id() {
        let head = EventHead::parse(br#"{"id":"x","type":"t","subject":"p","time":"now"}"#);
        assert_eq!(head.map(|h| h.subject), Ok("p".to_owned()));
        assert!(EventHead::parse(br#"{"type":"t"}"#).is_err());
        assert!(EventHead::parse(b"nope").is_err());
    }
}
