//! The partner's calls about its pushes (docs/partners.md#your-calls-about-your-pushes): `/queryNotifications`,
//! `/resendNotification`, `/recoverNotifications`. Signed like every call; `tradeType` is any
//! non-empty string (the endpoint's name by convention), as for `/stripeSubDirectly`.

use super::clock::parse_rfc3339_ms;
use super::fields::{FieldError, SignedFields};
use super::push::is_webhook_id;
use super::request::{PartnerCode, PayId, PayKey, TradeTime, check_version};

pub const QUERY_NOTIFICATIONS_FIELDS: &[&str] = &[
    "partnerCode",
    "payId",
    "sign",
    "tradeTime",
    "tradeType",
    "version",
];

pub const RESEND_FIELDS: &[&str] = &[
    "partnerCode",
    "webhook_id",
    "sign",
    "tradeTime",
    "tradeType",
    "version",
];

/// `until` is optional.
pub const RECOVER_FIELDS: &[&str] = &[
    "partnerCode",
    "since",
    "sign",
    "tradeTime",
    "tradeType",
    "version",
];

/// A valid `POST /queryNotifications`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationQuery {
    pub partner_code: PartnerCode,
    pub pay_id: PayId,
    pub trade_time: TradeTime,
}

impl NotificationQuery {
    /// The payId in its partner's namespace.
    pub fn pay_key(&self) -> PayKey {
        PayKey::new(self.partner_code.clone(), self.pay_id.clone())
    }

    pub fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        let fields = SignedFields::parse(body, QUERY_NOTIFICATIONS_FIELDS)?;
        let query = NotificationQuery {
            partner_code: PartnerCode::parse(fields.get("partnerCode"))?,
            pay_id: PayId::parse(fields.get("payId"))?,
            trade_time: TradeTime::parse(fields.get("tradeTime"))?,
        };
        check_version(&fields)?;
        Ok((query, fields))
    }
}

/// A valid `POST /resendNotification`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResendRequest {
    pub partner_code: PartnerCode,
    pub webhook_id: String,
    pub trade_time: TradeTime,
}

impl ResendRequest {
    pub fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        let fields = SignedFields::parse(body, RESEND_FIELDS)?;
        let partner_code = PartnerCode::parse(fields.get("partnerCode"))?;
        let webhook_id = fields.get("webhook_id").to_owned();
        if !is_webhook_id(&webhook_id) {
            return Err(FieldError::invalid(
                "webhook_id",
                "must be a webhook-id as pushed (msg_ and 32 hex digits)",
            ));
        }
        let request = ResendRequest {
            partner_code,
            webhook_id,
            trade_time: TradeTime::parse(fields.get("tradeTime"))?,
        };
        check_version(&fields)?;
        Ok((request, fields))
    }
}

/// A valid `POST /recoverNotifications`: the window in unix ms. Whether `since` is within the
/// retention is the intake's to check (it knows the clock and the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverRequest {
    pub partner_code: PartnerCode,
    pub since_ms: i64,
    /// None: until now.
    pub until_ms: Option<i64>,
    pub trade_time: TradeTime,
}

impl RecoverRequest {
    pub fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        let fields = SignedFields::parse(body, RECOVER_FIELDS)?;
        let partner_code = PartnerCode::parse(fields.get("partnerCode"))?;
        let since_ms = time_field("since", fields.get("since"))?;
        let until_ms = match fields.get("until") {
            "" => None,
            until => Some(time_field("until", until)?),
        };
        if until_ms.is_some_and(|until| until < since_ms) {
            return Err(FieldError::invalid("until", "must not be before since"));
        }
        let request = RecoverRequest {
            partner_code,
            since_ms,
            until_ms,
            trade_time: TradeTime::parse(fields.get("tradeTime"))?,
        };
        check_version(&fields)?;
        Ok((request, fields))
    }
}

/// A field holding an RFC 3339 time, in unix ms.
fn time_field(field: &str, value: &str) -> Result<i64, FieldError> {
    parse_rfc3339_ms(value).ok_or_else(|| {
        FieldError::invalid(field, "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(pairs: &[(&str, &str)]) -> Vec<u8> {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
            .collect();
        serde_json::to_vec(&map).expect("JSON")
    }

    const BASE: &[(&str, &str)] = &[
        ("partnerCode", "P1"),
        ("sign", "x"),
        ("tradeTime", "1700000000000"),
        ("tradeType", "recoverNotifications"),
        ("version", "3.0"),
    ];

    #[test]
    fn a_recovery_window_is_rfc_3339_and_in_order() {
        let with = |extra: &[(&str, &str)]| {
            let mut pairs = BASE.to_vec();
            pairs.extend_from_slice(extra);
            RecoverRequest::parse(&body(&pairs))
        };
        let (request, _) = with(&[("since", "2026-01-01T00:00:00Z")]).expect("valid");
        assert_eq!(request.since_ms, 1_767_225_600_000);
        assert_eq!(request.until_ms, None);
        assert!(matches!(
            with(&[("since", "yesterday")]),
            Err(FieldError::Invalid { field, .. }) if field == "since"
        ));
        assert!(matches!(
            with(&[("since", "2026-01-02T00:00:00Z"), ("until", "2026-01-01T00:00:00Z")]),
            Err(FieldError::Invalid { field, .. }) if field == "until"
        ));
        assert!(matches!(with(&[]), Err(FieldError::Missing { field }) if field == "since"));
    }

    #[test]
    fn a_resend_names_a_webhook_id() {
        let mut pairs = BASE.to_vec();
        pairs.push(("webhook_id", "msg_0123456789abcdef0123456789abcdef"));
        assert!(ResendRequest::parse(&body(&pairs)).is_ok());
        pairs.pop();
        pairs.push(("webhook_id", "evt_1"));
        assert!(matches!(
            ResendRequest::parse(&body(&pairs)),
            Err(FieldError::Invalid { field, .. }) if field == "webhook_id"
        ));
    }
}
