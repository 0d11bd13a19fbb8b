//! An auto-renewal's life after its creation (docs/partners.md#the-rest-of-an-auto-renewals-life): the state the store keeps of it, the
//! changes a worker applies to that state, and `POST /queryAutoRenewalRecord`, which reads it.

use serde::{Deserialize, Serialize};

use super::fields::{FieldError, SignedFields};
use super::request::{PartnerCode, PayId, PayKey, TradeTime, check_trade_type, check_version};

/// The `tradeType` a query carries.
pub const QUERY_TRADE_TYPE: &str = "queryAutoRenewalRecord";

/// The fields of `POST /queryAutoRenewalRecord`, in the order they are checked.
pub const RENEWAL_QUERY_FIELDS: &[&str] = &[
    "partnerCode",
    "payId",
    "sign",
    "tradeTime",
    "tradeType",
    "version",
];

/// The subscription status Stripe gives a subscription that is over.
pub const STATUS_CANCELED: &str = "canceled";

/// Whether a subscription in this Stripe status is over for good: `canceled`, or
/// `incomplete_expired` (its first payment never came). Every other status can still charge, so
/// what is kept for its payId must outlive every cache expiry.
pub fn has_ended(status: &str) -> bool {
    matches!(status, STATUS_CANCELED | "incomplete_expired")
}

/// A valid `POST /queryAutoRenewalRecord`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalQuery {
    pub partner_code: PartnerCode,
    pub pay_id: PayId,
    pub trade_time: TradeTime,
}

impl RenewalQuery {
    /// The payId in its partner's namespace: what everything kept for it is keyed by.
    pub fn pay_key(&self) -> PayKey {
        PayKey::new(self.partner_code.clone(), self.pay_id.clone())
    }

    pub fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        let fields = SignedFields::parse(body, RENEWAL_QUERY_FIELDS)?;
        let query = RenewalQuery {
            partner_code: PartnerCode::parse(fields.get("partnerCode"))?,
            pay_id: PayId::parse(fields.get("payId"))?,
            trade_time: TradeTime::parse(fields.get("tradeTime"))?,
        };
        check_trade_type(&fields, QUERY_TRADE_TYPE)?;
        check_version(&fields)?;
        Ok((query, fields))
    }
}

/// Why the last renewal charge failed, as Stripe said it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalError {
    /// The invoice whose charge failed.
    pub invoice_id: String,
    /// Stripe's error `code` (`card_declined`, …), where Stripe gave one.
    #[serde(default)]
    pub code: Option<String>,
    /// Stripe's `decline_code`, where Stripe gave one.
    #[serde(default)]
    pub decline_code: Option<String>,
    pub message: String,
}

/// What the store holds of one payId's auto-renewal, kept current by the webhooks. Times are
/// unix seconds; the intake shows them as RFC 3339.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenewalState {
    pub partner_code: String,
    /// The Stripe subscription (`sub_…`), once an event named it.
    pub sub_id: String,
    /// Stripe's subscription status (`active`, `past_due`, `canceled`, …); empty until an event
    /// said it.
    pub status: String,
    pub current_period_end: Option<i64>,
    pub cancel_at_period_end: bool,
    pub canceled_at: Option<i64>,
    /// Paid renewals so far, each invoice counted once however often its event comes.
    pub renewals: u64,
    pub last_renewal_at: Option<i64>,
    pub last_invoice_id: String,
    pub last_error: Option<RenewalError>,
}

/// One change to a payId's state, from one Stripe event (or a cancel the worker ran).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewalChange {
    /// The subscription's own state, from `customer.subscription.*` or a retrieved subscription.
    Subscription {
        sub_id: String,
        status: String,
        current_period_end: Option<i64>,
        cancel_at_period_end: bool,
        canceled_at: Option<i64>,
    },
    /// A paid renewal invoice (`invoice.paid`, `billing_reason` `subscription_cycle`).
    Renewed { invoice_id: String, paid_at: i64 },
    /// A failed renewal charge (`invoice.payment_failed`).
    RenewalFailed { error: RenewalError },
}

/// A change with its place in time. The state never goes back: each part of it (the
/// subscription, the last renewal, the last error) keeps the version of the change that last
/// wrote it, and a change whose version is not above that one leaves the part as it is.
///
/// The worker picks the version: larger is newer, equal is "the same or not newer". A
/// suggestion that orders Stripe's events as the contract asks (by the object's own fields and
/// the event's `created`): `created << 16 | rank`, with `rank` a small tie-break from the object
/// (e.g. `canceled` above any other status), since one second can hold several events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalUpdate {
    pub partner_code: PartnerCode,
    pub version: u64,
    pub change: RenewalChange,
}

/// What applying a [`RenewalUpdate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The change was newer than the stored part and was written.
    pub newer: bool,
    /// For a renewal: its invoice had not been counted yet, and now is (the event is announced
    /// whatever this says; this only tells a first delivery from a repeat).
    pub counted: bool,
}
