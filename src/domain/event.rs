//! The result event: a CloudEvents 1.0 envelope (structured mode) around a job's final result
//! (docs/partners.md#events-and-the-broker).

use serde::{Deserialize, Serialize};

use super::job::Job;
use super::outcome::{FailureDetail, FinalResult};

pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json";
pub const TYPE_SUCCEEDED: &str = "autorenew.subscription.succeeded";
pub const TYPE_FAILED: &str = "autorenew.subscription.failed";

/// What happened later in an auto-renewal's life (docs/partners.md#the-rest-of-an-auto-renewals-life): the middle word of the routing
/// key `subscription.<kind>.<partnerCode>` and the end of the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleKind {
    Renewed,
    RenewalFailed,
    Updated,
    Canceled,
}

impl LifecycleKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            LifecycleKind::Renewed => "renewed",
            LifecycleKind::RenewalFailed => "renewal_failed",
            LifecycleKind::Updated => "updated",
            LifecycleKind::Canceled => "canceled",
        }
    }
}

/// The CloudEvent ids of an auto-renewal's changes. Each is derived from the change itself (the
/// subscription and what changed), never from how the worker learned of it: a cancel the worker
/// made and Stripe's event about it, or one Stripe event delivered twice, are one change under
/// one id, which a subscriber de-duplicating on `id` keeps once.
pub mod change_id {
    /// A paid renewal: its invoice.
    pub fn renewed(sub_id: &str, invoice_id: &str) -> String {
        format!("{sub_id}:renewed:{invoice_id}")
    }

    /// A failed renewal charge: its invoice and which attempt at it failed.
    pub fn renewal_failed(sub_id: &str, invoice_id: &str, attempt: u64) -> String {
        format!("{sub_id}:renewal_failed:{invoice_id}:{attempt}")
    }

    /// A new status or cancel flag, in the period it applies to.
    pub fn updated(
        sub_id: &str,
        status: &str,
        cancel_at_period_end: bool,
        current_period_end: Option<i64>,
    ) -> String {
        let period_end = current_period_end.unwrap_or_default();
        format!("{sub_id}:updated:{status}:{cancel_at_period_end}:{period_end}")
    }

    /// The end: a subscription is canceled once.
    pub fn canceled(sub_id: &str) -> String {
        format!("{sub_id}:canceled")
    }
}

/// A CloudEvent about an auto-renewal after its creation: `data` carries `payId`,
/// `partnerCode`, `sub_id` and what the kind adds (docs/partners.md#the-rest-of-an-auto-renewals-life).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    pub specversion: String,
    /// Derived from the change it reports ([`change_id`]), so consumers can de-duplicate.
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The payId.
    pub subject: String,
    pub time: String,
    pub datacontenttype: String,
    pub data: serde_json::Value,
    /// The partner, for the routing key; not part of the event.
    #[serde(skip)]
    pub partner_code: String,
    #[serde(skip)]
    pub lifecycle: Option<LifecycleKind>,
}

impl LifecycleEvent {
    pub fn new(
        lifecycle: LifecycleKind,
        id: String,
        source: &str,
        pay_id: &str,
        partner_code: &str,
        time: String,
        mut data: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        data.insert("payId".into(), pay_id.into());
        data.insert("partnerCode".into(), partner_code.into());
        LifecycleEvent {
            specversion: "1.0".into(),
            id,
            source: source.to_owned(),
            kind: format!("autorenew.subscription.{}", lifecycle.as_str()),
            subject: pay_id.to_owned(),
            time,
            datacontenttype: "application/json".into(),
            data: serde_json::Value::Object(data),
            partner_code: partner_code.to_owned(),
            lifecycle: Some(lifecycle),
        }
    }

    /// `subscription.<kind>.<partnerCode>`.
    pub fn routing_key(&self) -> String {
        let kind = self.lifecycle.map_or("updated", |k| k.as_str());
        format!("subscription.{kind}.{}", self.partner_code)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `succeeded` or `failed`: the middle word of the routing key and the end of the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    Succeeded,
    Failed,
}

impl ResultKind {
    pub fn of(result: &FinalResult) -> Self {
        if result.is_failed() {
            ResultKind::Failed
        } else {
            ResultKind::Succeeded
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ResultKind::Succeeded => "succeeded",
            ResultKind::Failed => "failed",
        }
    }
}

/// The `data` of a result event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultData {
    #[serde(rename = "payId")]
    pub pay_id: String,
    #[serde(rename = "partnerCode")]
    pub partner_code: String,
    pub email: String,
    pub plan_id: String,
    #[serde(rename = "payAmount")]
    pub pay_amount: String,
    #[serde(rename = "payCurrency")]
    pub pay_currency: String,
    pub status: String,
    pub customer_id: String,
    pub sub_id: String,
    pub product_id: String,
    pub pay_method: String,
    pub error: Option<FailureDetail>,
    pub attempts: u32,
    pub accepted_at: String,
    pub completed_at: String,
}

/// A CloudEvents 1.0 event in structured mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultEvent {
    pub specversion: String,
    /// Stable for a payId and outcome, so consumers can de-duplicate redeliveries.
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The payId.
    pub subject: String,
    pub time: String,
    pub datacontenttype: String,
    pub data: ResultData,
}

impl ResultEvent {
    /// The event for a job's final result. `source` names the emitting deployment.
    pub fn new(job: &Job, result: &FinalResult, source: &str) -> Self {
        let outcome = ResultKind::of(result);
        ResultEvent {
            specversion: "1.0".into(),
            // Scoped by partner like the payId itself: two partners' payIds of one name are two
            // events, which a subscriber de-duplicating by id must keep apart.
            id: format!("{}:{}", job.pay_key(), outcome.as_str()),
            source: source.to_owned(),
            kind: match outcome {
                ResultKind::Succeeded => TYPE_SUCCEEDED.into(),
                ResultKind::Failed => TYPE_FAILED.into(),
            },
            subject: job.pay_id.to_string(),
            time: result.completed_at.clone(),
            datacontenttype: "application/json".into(),
            data: ResultData {
                pay_id: job.pay_id.to_string(),
                partner_code: job.partner_code.to_string(),
                email: job.email.to_string(),
                plan_id: job.plan_id.to_string(),
                pay_amount: job.pay_amount.clone(),
                pay_currency: job.pay_currency.clone(),
                status: result.status.clone(),
                customer_id: result.customer_id.clone(),
                sub_id: result.sub_id.clone(),
                product_id: result.product_id.clone(),
                pay_method: result.pay_method.clone(),
                error: result.error.clone(),
                attempts: result.attempts,
                accepted_at: result.accepted_at.clone(),
                completed_at: result.completed_at.clone(),
            },
        }
    }

    /// `subscription.<outcome>.<partnerCode>`.
    pub fn routing_key(&self) -> String {
        let outcome = if self.kind == TYPE_FAILED {
            ResultKind::Failed
        } else {
            ResultKind::Succeeded
        };
        format!(
            "subscription.{}.{}",
            outcome.as_str(),
            self.data.partner_code
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
