//! The result event: a CloudEvents 1.0 envelope (structured mode) around a job's final result
//! (CONTRACT §5).

use serde::{Deserialize, Serialize};

use super::job::Job;
use super::outcome::{FailureDetail, FinalResult};

pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json";
pub const TYPE_SUCCEEDED: &str = "autorenew.subscription.succeeded";
pub const TYPE_FAILED: &str = "autorenew.subscription.failed";

/// What happened later in an auto-renewal's life (CONTRACT §9.2): the middle word of the routing
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

/// A CloudEvent about an auto-renewal after its creation: `data` carries `payId`,
/// `partnerCode`, `sub_id` and what the kind adds (CONTRACT §9.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    pub specversion: String,
    /// Stable for what it reports (a Stripe event id, or a cancel request), so consumers can
    /// de-duplicate redeliveries.
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
