//! The two partner requests, parsed: once a body is a [`SubscriptionRequest`] or a
//! [`ResultQuery`], every field in it is valid (docs/partners.md#the-api).

use std::fmt;

use super::fields::{FieldError, SignedFields};
use super::money::{Amount, AmountError, Currency};

/// The protocol version partners send.
pub const VERSION: &str = "3.0";

/// The fields of `POST /stripeSubDirectly`, in the order they are checked.
pub const SUBSCRIPTION_FIELDS: &[&str] = &[
    "email",
    "partnerCode",
    "payAmount",
    "payCurrency",
    "payId",
    "plan_id",
    "pm_id",
    "sign",
    "tradeTime",
    "tradeType",
    "version",
];

/// The fields of `POST /resultQuery`, in the order they are checked.
pub const RESULT_QUERY_FIELDS: &[&str] = &[
    "partnerCode",
    "payId",
    "sign",
    "tradeTime",
    "tradeType",
    "version",
];

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// A partner's code, as configured (`P000818`).
    PartnerCode
);
string_newtype!(
    /// The partner's id for one payment: 1-64 of `[A-Za-z0-9_-]`.
    PayId
);
string_newtype!(
    /// A Stripe payment method id (`pm_…`).
    PaymentMethodId
);
string_newtype!(
    /// The partner's plan name; becomes part of a Stripe price's `lookup_key`.
    PlanId
);
string_newtype!(
    /// A customer's email address.
    Email
);

impl PartnerCode {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let ok = value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok {
            Ok(PartnerCode(value.to_owned()))
        } else {
            Err(FieldError::invalid(
                "partnerCode",
                "must be at most 64 of A-Z a-z 0-9 _ -",
            ))
        }
    }
}

impl PayId {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let ok = (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(PayId(value.to_owned()))
        } else {
            Err(FieldError::invalid(
                "payId",
                "must be 1-64 characters of A-Z a-z 0-9 _ -",
            ))
        }
    }
}

/// A payId in the namespace of the partner that sent it. Two partners may use the same payId:
/// everything kept for a payId (the intake's record, the result, the lock, the renewal state,
/// Stripe's idempotency keys) is keyed by this pair, never by the payId alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayKey {
    partner: PartnerCode,
    pay_id: PayId,
}

impl PayKey {
    pub fn new(partner: PartnerCode, pay_id: PayId) -> Self {
        PayKey { partner, pay_id }
    }

    pub fn partner(&self) -> &PartnerCode {
        &self.partner
    }

    pub fn pay_id(&self) -> &PayId {
        &self.pay_id
    }
}

/// `P000818:ENV1`. Neither part can hold a `:`, so the text names one pair only; it is the hash
/// tag of the pair's Redis keys and the stem of its idempotency keys.
impl fmt::Display for PayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partner, self.pay_id)
    }
}

impl PaymentMethodId {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let rest = value.strip_prefix("pm_").unwrap_or("");
        let ok = !rest.is_empty()
            && value.len() <= 255
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(PaymentMethodId(value.to_owned()))
        } else {
            Err(FieldError::invalid(
                "pm_id",
                "must be a Stripe payment method id: pm_ followed by letters, digits or _",
            ))
        }
    }
}

impl PlanId {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        // Stripe's lookup_key holds 200 characters; ours adds amount, currency and interval.
        let ok = value.chars().count() <= 100 && !value.chars().any(char::is_control);
        if ok {
            Ok(PlanId(value.to_owned()))
        } else {
            Err(FieldError::invalid(
                "plan_id",
                "must be at most 100 characters, none of them control characters",
            ))
        }
    }
}

impl Email {
    /// A plausible address: one `@`, something before it, a dotted domain after it, no spaces.
    /// Deliverability is Stripe's and the mail system's business, not ours.
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let plausible = value.len() <= 254
            && !value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'))
            && match value.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && local.len() <= 64
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !domain.contains("..")
                }
                None => false,
            };
        if plausible {
            Ok(Email(value.to_owned()))
        } else {
            Err(FieldError::invalid("email", "must be an email address"))
        }
    }

    /// The address with most of the local part hidden, for logs: `42…@qq.com`.
    pub fn masked(&self) -> String {
        match self.0.split_once('@') {
            Some((local, domain)) => {
                let shown: String = local.chars().take(2).collect();
                format!("{shown}…@{domain}")
            }
            None => "…".into(),
        }
    }
}

/// `tradeTime`: epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeTime(u64);

impl TradeTime {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        if value.is_empty() || value.len() > 16 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::invalid(
                "tradeTime",
                "must be epoch milliseconds (digits only)",
            ));
        }
        value
            .parse()
            .map(TradeTime)
            .map_err(|_| FieldError::invalid("tradeTime", "must be epoch milliseconds"))
    }

    pub fn millis(&self) -> u64 {
        self.0
    }

    /// Whether this time is within `max_skew_ms` of `now_ms`, either side. 0 turns the check off.
    pub fn is_within(&self, now_ms: u64, max_skew_ms: u64) -> bool {
        max_skew_ms == 0 || self.0.abs_diff(now_ms) <= max_skew_ms
    }
}

pub(crate) fn check_version(fields: &SignedFields) -> Result<(), FieldError> {
    if fields.get("version") == VERSION {
        Ok(())
    } else {
        Err(FieldError::invalid("version", format!("must be {VERSION}")))
    }
}

/// For the endpoints whose `tradeType` is their own name (the cancel and the query of docs/partners.md).
pub(crate) fn check_trade_type(fields: &SignedFields, expected: &str) -> Result<(), FieldError> {
    if fields.get("tradeType") == expected {
        Ok(())
    } else {
        Err(FieldError::invalid(
            "tradeType",
            format!("must be {expected}"),
        ))
    }
}

/// A valid `POST /stripeSubDirectly`. Its sign and tradeTime are checked by the intake, which
/// knows the partner's secret and the clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRequest {
    pub email: Email,
    pub partner_code: PartnerCode,
    /// `payAmount` as the partner wrote it, for the result event.
    pub pay_amount: String,
    pub amount: Amount,
    pub pay_id: PayId,
    pub plan_id: PlanId,
    pub pm_id: PaymentMethodId,
    pub trade_time: TradeTime,
    pub trade_type: String,
}

impl SubscriptionRequest {
    /// The payId in its partner's namespace: what everything kept for it is keyed by.
    pub fn pay_key(&self) -> PayKey {
        PayKey::new(self.partner_code.clone(), self.pay_id.clone())
    }

    /// Reads and validates a body: JSON, fields present, each field's format.
    pub fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        let fields = SignedFields::parse(body, SUBSCRIPTION_FIELDS)?;
        let request = Self::from_fields(&fields)?;
        Ok((request, fields))
    }

    pub fn from_fields(fields: &SignedFields) -> Result<Self, FieldError> {
        let email = Email::parse(fields.get("email"))?;
        let partner_code = PartnerCode::parse(fields.get("partnerCode"))?;
        let currency = Currency::parse(fields.get("payCurrency")).ok_or_else(|| {
            FieldError::invalid(
                "payCurrency",
                "must be an ISO 4217 currency code that Stripe accepts",
            )
        })?;
        let pay_amount = fields.get("payAmount");
        let amount = Amount::parse(pay_amount, currency)
            .map_err(|e: AmountError| FieldError::invalid("payAmount", e.to_string()))?;
        let pay_id = PayId::parse(fields.get("payId"))?;
        let plan_id = PlanId::parse(fields.get("plan_id"))?;
        let pm_id = PaymentMethodId::parse(fields.get("pm_id"))?;
        let trade_time = TradeTime::parse(fields.get("tradeTime"))?;
        check_version(fields)?;
        Ok(SubscriptionRequest {
            email,
            partner_code,
            pay_amount: pay_amount.to_owned(),
            amount,
            pay_id,
            plan_id,
            pm_id,
            trade_time,
            trade_type: fields.get("tradeType").to_owned(),
        })
    }
}

/// A valid `POST /resultQuery`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultQuery {
    pub partner_code: PartnerCode,
    pub pay_id: PayId,
    pub trade_time: TradeTime,
}

impl ResultQuery {
    /// The payId in its partner's namespace: what everything kept for it is keyed by.
    pub fn pay_key(&self) -> PayKey {
        PayKey::new(self.partner_code.clone(), self.pay_id.clone())
    }

    pub fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        let fields = SignedFields::parse(body, RESULT_QUERY_FIELDS)?;
        let query = ResultQuery {
            partner_code: PartnerCode::parse(fields.get("partnerCode"))?,
            pay_id: PayId::parse(fields.get("payId"))?,
            trade_time: TradeTime::parse(fields.get("tradeTime"))?,
        };
        check_version(&fields)?;
        Ok((query, fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_plausible_or_rejected() {
        for good in ["421516116@qq.com", "用户@例子.cn", "a.b+c@x.co.uk"] {
            assert!(Email::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "plain",
            "@x.com",
            "a@",
            "a@b",
            "a b@c.com",
            "a@b@c.com",
            "a@.com",
            "a@c..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn masked_emails_hide_the_local_part() {
        let email = Email::parse("421516116@qq.com").expect("valid");
        assert_eq!(email.masked(), "42…@qq.com");
    }

    #[test]
    fn pay_ids_follow_the_contract_alphabet() {
        assert!(PayId::parse("P0002702020110214193780630").is_ok());
        assert!(PayId::parse(&"a".repeat(64)).is_ok());
        assert!(PayId::parse(&"a".repeat(65)).is_err());
        assert!(PayId::parse("a b").is_err());
        assert!(PayId::parse("ab/c").is_err());
    }

    #[test]
    fn trade_time_skew_is_symmetric_and_zero_turns_it_off() {
        let t = TradeTime::parse("1000000").expect("digits");
        assert!(t.is_within(1_200_000, 300_000));
        assert!(!t.is_within(1_300_001, 300_000));
        assert!(!t.is_within(600_000, 300_000));
        assert!(t.is_within(u64::MAX, 0));
    }
}
