//! `POST /cancelAutoRenewalRecord` (docs/partners.md#post-cancelautorenewalrecord): the request, parsed, and the cancel job the
//! intake puts on the jobs exchange for a worker.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::fields::{FieldError, SignedFields};
use super::request::{PartnerCode, PayId, PayKey, TradeTime, check_trade_type, check_version};

/// The `tradeType` a cancel carries.
pub const CANCEL_TRADE_TYPE: &str = "cancelAutoRenewalRecord";

/// The required fields of `POST /cancelAutoRenewalRecord`, in the order they are checked.
/// `when` is optional (see [`CancelWhen`]).
pub const CANCEL_FIELDS: &[&str] = &[
    "partnerCode",
    "payId",
    "sign",
    "tradeTime",
    "tradeType",
    "version",
];

/// The `type` property of a cancel job on the jobs exchange.
///
/// Body: a [`CancelJob`] as JSON. `message_id`: [`CancelJob::message_id`], the same for every
/// copy of one cancel, so a consumer can de-duplicate.
pub const CANCEL_MESSAGE_TYPE: &str = "autorenew.cancel.v1";

/// When a cancel takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelWhen {
    /// No more renewals: Stripe's `cancel_at_period_end=true`; the paid period runs out.
    PeriodEnd,
    /// Cancel the subscription at once (Stripe's `DELETE /v1/subscriptions/{id}`).
    Now,
}

impl CancelWhen {
    pub fn as_str(&self) -> &'static str {
        match self {
            CancelWhen::PeriodEnd => "period_end",
            CancelWhen::Now => "now",
        }
    }

    /// `when` as sent: absent or empty (the sign leaves empty values out, so an empty one is
    /// the same as none) means `period_end`.
    pub fn parse(value: Option<&str>) -> Result<Self, FieldError> {
        match value.unwrap_or("") {
            "" | "period_end" => Ok(CancelWhen::PeriodEnd),
            "now" => Ok(CancelWhen::Now),
            _ => Err(FieldError::invalid("when", "must be period_end or now")),
        }
    }
}

impl fmt::Display for CancelWhen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A valid `POST /cancelAutoRenewalRecord`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub partner_code: PartnerCode,
    pub pay_id: PayId,
    pub trade_time: TradeTime,
    pub when: CancelWhen,
}

impl CancelRequest {
    /// The payId in its partner's namespace: what everything kept for it is keyed by.
    pub fn pay_key(&self) -> PayKey {
        PayKey::new(self.partner_code.clone(), self.pay_id.clone())
    }

    pub fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        let fields = SignedFields::parse(body, CANCEL_FIELDS)?;
        let request = CancelRequest {
            partner_code: PartnerCode::parse(fields.get("partnerCode"))?,
            pay_id: PayId::parse(fields.get("payId"))?,
            trade_time: TradeTime::parse(fields.get("tradeTime"))?,
            when: CancelWhen::parse(fields.iter().find(|(k, _)| *k == "when").map(|(_, v)| v))?,
        };
        check_trade_type(&fields, CANCEL_TRADE_TYPE)?;
        check_version(&fields)?;
        Ok((request, fields))
    }
}

/// What a worker needs to cancel one payId's subscription. It runs under the payId's lock,
/// after the creation has ended, with fixed idempotency keys derived from `payId` and `when`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelJob {
    pub pay_id: PayId,
    pub partner_code: PartnerCode,
    pub when: CancelWhen,
    /// When the intake accepted the cancel (RFC 3339).
    pub requested_at: String,
    /// The intake's id for the HTTP request that brought the cancel, for following it in logs.
    pub request_id: String,
}

/// A message body that is not a cancel job.
#[derive(Debug, thiserror::Error)]
#[error("not a cancel job: {0}")]
pub struct CancelDecodeError(#[from] serde_json::Error);

impl CancelJob {
    /// The payId in its partner's namespace: what everything kept for it is keyed by.
    pub fn pay_key(&self) -> PayKey {
        PayKey::new(self.partner_code.clone(), self.pay_id.clone())
    }

    /// The AMQP `message_id`: one per (payId, when), whoever sent it and however often.
    pub fn message_id(&self) -> String {
        format!("cancel:{}:{}", self.pay_key(), self.when)
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CancelDecodeError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"partnerCode":"P1","payId":"A-1","sign":"x","tradeTime":"1","tradeType":"cancelAutoRenewalRecord","version":"3.0"{extra}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn when_defaults_to_period_end() {
        let (request, _) = CancelRequest::parse(&body("")).expect("valid");
        assert_eq!(request.when, CancelWhen::PeriodEnd);
        let (request, _) = CancelRequest::parse(&body(r#","when":"""#)).expect("valid");
        assert_eq!(request.when, CancelWhen::PeriodEnd);
        let (request, _) = CancelRequest::parse(&body(r#","when":"now""#)).expect("valid");
        assert_eq!(request.when, CancelWhen::Now);
    }

    #[test]
    fn an_unknown_when_names_the_field() {
        let error = CancelRequest::parse(&body(r#","when":"tomorrow""#)).unwrap_err();
        assert_eq!(error.field(), Some("when"));
        assert!(matches!(error, FieldError::Invalid { .. }));
    }

    #[test]
    fn the_trade_type_must_name_the_endpoint() {
        let wrong = String::from_utf8(body(""))
            .unwrap()
            .replace("cancelAutoRenewalRecord", "resultQuery");
        let error = CancelRequest::parse(wrong.as_bytes()).unwrap_err();
        assert_eq!(error.field(), Some("tradeType"));
    }

    #[test]
    fn a_cancel_job_round_trips_and_names_its_message() {
        let job = CancelJob {
            pay_id: PayId::parse("A-1").unwrap(),
            partner_code: PartnerCode::parse("P1").unwrap(),
            when: CancelWhen::Now,
            requested_at: "2026-01-01T00:00:00Z".into(),
            request_id: "r".into(),
        };
        let json: serde_json::Value = serde_json::from_slice(&job.encode()).unwrap();
        assert_eq!(json["payId"], "A-1");
        assert_eq!(json["when"], "now");
        assert_eq!(CancelJob::decode(&job.encode()).unwrap(), job);
        assert_eq!(job.message_id(), "cancel:P1:A-1:now");
    }
}
