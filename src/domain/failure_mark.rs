//! A final failure recorded at Stripe, the system of record: one metadata entry on a customer
//! of the job's (`partnerCode`, `email`), written before the failure is stored in Redis and
//! announced. A copy of the job that finds Redis emptied (a failover to an empty replica, a
//! flush) and no subscription at Stripe reads it and announces the same `F` again, instead of
//! creating a subscription for a payId the partner was told had failed
//! (docs/design.md#a-final-failure-outlives-redis).
//!
//! Stripe's metadata limits shape it: a key of at most 40 characters (so the payId, up to 64,
//! is hashed into the key and written out in full in the value), a value of at most 500
//! (so the message is cut), and at most 50 keys on one customer.

use serde::{Deserialize, Serialize};

use super::authorization::short_hash;
use super::{FailureCode, FailureDetail, PayKey};

/// Every mark's key starts so; 10 characters and a 24-character hash: 34 of Stripe's 40.
pub const KEY_PREFIX: &str = "ar_failed_";
/// The most of the failure's message a mark keeps, and the longest value Stripe takes.
const MESSAGE_CHARS: usize = 200;
const VALUE_CHARS: usize = 500;

/// What a mark's value holds: the payId it is about (a hash in the key could collide) and the
/// failure, as the partner was told it.
#[derive(Debug, Serialize, Deserialize)]
struct Mark {
    #[serde(rename = "payId")]
    pay_id: String,
    #[serde(rename = "partnerCode")]
    partner_code: String,
    code: FailureCode,
    message: String,
    #[serde(default)]
    stripe_code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
}

/// The metadata key of this partner's payId's mark.
pub fn key(pay_key: &PayKey) -> String {
    format!("{KEY_PREFIX}{}", short_hash(&pay_key.to_string()))
}

/// The metadata value that records `detail` as the payId's final failure.
pub fn value(pay_key: &PayKey, detail: &FailureDetail) -> String {
    let mut mark = Mark {
        pay_id: pay_key.pay_id().to_string(),
        partner_code: pay_key.partner().to_string(),
        code: detail.code,
        message: detail.message.chars().take(MESSAGE_CHARS).collect(),
        stripe_code: detail.stripe_code.clone(),
        decline_code: detail.decline_code.clone(),
    };
    loop {
        let value = serde_json::to_string(&mark).unwrap_or_default();
        // Escapes can lengthen a message: shorten it until the whole fits.
        if value.chars().count() <= VALUE_CHARS || mark.message.is_empty() {
            return value;
        }
        let keep = mark.message.chars().count() / 2;
        mark.message = mark.message.chars().take(keep).collect();
    }
}

/// The failure a mark records, if `value` is a mark of this very payId.
pub fn read(pay_key: &PayKey, value: &str) -> Option<FailureDetail> {
    let mark: Mark = serde_json::from_str(value).ok()?;
    (mark.pay_id == pay_key.pay_id().as_str() && mark.partner_code == pay_key.partner().as_str())
        .then_some(FailureDetail {
            code: mark.code,
            message: mark.message,
            stripe_code: mark.stripe_code,
            decline_code: mark.decline_code,
        })
}

/// The idempotency key of writing this mark: fixed for the payId and the value, so a repeat is
/// Stripe's replay, and a copy that ends with another failure writes under a key of its own.
pub fn write_key(pay_key: &PayKey, value: &str) -> String {
    format!("ar-{pay_key}-failed-{}", short_hash(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PartnerCode, PayId};

    fn pay_key(pay_id: &str) -> PayKey {
        PayKey::new(
            PartnerCode::parse("P000818").unwrap(),
            PayId::parse(pay_id).unwrap(),
        )
    }

    fn declined() -> FailureDetail {
        FailureDetail {
            code: FailureCode::CardDeclined,
            message: "x".repeat(1_000),
            stripe_code: Some("card_declined".into()),
            decline_code: Some("do_not_honor".into()),
        }
    }

    #[test]
    fn a_mark_reads_back_as_the_failure_it_records_within_stripe_s_limits() {
        let longest = pay_key(&"P".repeat(64));
        let value = value(&longest, &declined());
        assert!(key(&longest).len() <= 40, "{}", key(&longest));
        assert!(value.chars().count() <= 500, "{}", value.len());
        let read = read(&longest, &value).expect("the mark reads back");
        assert_eq!(read.code, FailureCode::CardDeclined);
        assert_eq!(read.decline_code.as_deref(), Some("do_not_honor"));
        assert_eq!(read.message.len(), MESSAGE_CHARS);
    }

    #[test]
    fn a_message_full_of_escapes_is_cut_to_fit() {
        let detail = FailureDetail {
            message: "\u{1}\"".repeat(300),
            ..declined()
        };
        let longest = PayKey::new(
            PartnerCode::parse(&"C".repeat(64)).unwrap(),
            PayId::parse(&"P".repeat(64)).unwrap(),
        );
        let value = value(&longest, &detail);
        assert!(value.chars().count() <= VALUE_CHARS, "{}", value.len());
        assert!(read(&longest, &value).is_some());
    }

    #[test]
    fn a_mark_of_another_pay_id_or_partner_is_not_read_as_this_one_s() {
        let value = value(&pay_key("A1"), &declined());
        assert!(read(&pay_key("A2"), &value).is_none());
        let other = PayKey::new(
            PartnerCode::parse("P000999").unwrap(),
            PayId::parse("A1").unwrap(),
        );
        assert!(read(&other, &value).is_none());
        assert!(read(&pay_key("A1"), "not json").is_none());
    }
}
