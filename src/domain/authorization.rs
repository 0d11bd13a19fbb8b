//! `POST /stripeSubAuthorization` (docs/partners.md#before-the-request-stripesubauthorization): the request that comes before
//! `stripeSubDirectly`, the record the store keeps of the SetupIntent it answered, and the
//! fixed Stripe idempotency keys it shares with the worker.

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::fields::{FieldError, SignedFields};
use super::request::{
    Email, PartnerCode, PayId, PayKey, TradeTime, check_trade_type, check_version,
};

/// The `tradeType` an authorization carries.
pub const AUTHORIZATION_TRADE_TYPE: &str = "stripeSubAuthorization";

/// The fields of `POST /stripeSubAuthorization`, in the order they are checked.
pub const AUTHORIZATION_FIELDS: &[&str] = &[
    "email",
    "partnerCode",
    "payId",
    "sign",
    "tradeTime",
    "tradeType",
    "version",
];

/// A valid `POST /stripeSubAuthorization`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRequest {
    pub partner_code: PartnerCode,
    pub pay_id: PayId,
    pub email: Email,
    pub trade_time: TradeTime,
}

impl AuthorizationRequest {
    /// The payId in its partner's namespace.
    pub fn pay_key(&self) -> PayKey {
        PayKey::new(self.partner_code.clone(), self.pay_id.clone())
    }

    pub fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        let fields = SignedFields::parse(body, AUTHORIZATION_FIELDS)?;
        let request = AuthorizationRequest {
            email: Email::parse(fields.get("email"))?,
            partner_code: PartnerCode::parse(fields.get("partnerCode"))?,
            pay_id: PayId::parse(fields.get("payId"))?,
            trade_time: TradeTime::parse(fields.get("tradeTime"))?,
        };
        check_trade_type(&fields, AUTHORIZATION_TRADE_TYPE)?;
        check_version(&fields)?;
        Ok((request, fields))
    }
}

/// What the store keeps of one payId's authorization: the answer it was given, so a repeat
/// answers the same SetupIntent without asking Stripe, and the worker knows the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub email: String,
    pub customer_id: String,
    pub setup_intent_id: String,
    pub client_secret: String,
}

/// The idempotency key of creating the customer of (`partnerCode`, `email`): one person, one
/// customer, whichever payId (the job's or the authorization's) makes it first. `suffix` moves
/// on with a job's attempts (Stripe replays a stored 500 for a key).
pub fn customer_key(partner: &str, email: &str, suffix: &str) -> String {
    format!(
        "ar-cus-{}-{suffix}",
        short_hash(&format!("{partner}\n{email}"))
    )
}

/// The idempotency key of a payId's SetupIntent: a repeat gets the same one back from Stripe.
/// The partner is in it, since two partners may use one payId.
pub fn setup_intent_key(partner: &str, pay_id: &PayId) -> String {
    format!("ar-{pay_id}-seti-{}", short_hash(partner))
}

/// 24 hex digits of MD5: a key part that is short, fixed and free of odd characters.
pub fn short_hash(text: &str) -> String {
    hex::encode(&Md5::digest(text.as_bytes())[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(trade_type: &str) -> String {
        format!(
            r#"{{"email":"a@b.co","partnerCode":"P1","payId":"X1","sign":"s","tradeTime":"1","tradeType":"{trade_type}","version":"3.0"}}"#
        )
    }

    #[test]
    fn an_authorization_names_its_own_trade_type() {
        assert!(AuthorizationRequest::parse(body("stripeSubAuthorization").as_bytes()).is_ok());
        let wrong = AuthorizationRequest::parse(body("stripeSubDirectly").as_bytes());
        assert_eq!(
            wrong.map(|_| ()).unwrap_err().field(),
            Some("tradeType"),
            "the field is named"
        );
    }

    #[test]
    fn keys_are_fixed_and_the_partner_tells_two_payids_apart() {
        let pay_id = PayId::parse("X1").expect("a payId");
        assert_eq!(
            setup_intent_key("P1", &pay_id),
            setup_intent_key("P1", &pay_id)
        );
        assert_ne!(
            setup_intent_key("P1", &pay_id),
            setup_intent_key("P2", &pay_id)
        );
        assert!(customer_key("P1", "a@b.co", "g0").starts_with("ar-cus-"));
    }
}
