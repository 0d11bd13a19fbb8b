//! What every intake handler shares.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use super::authorize::Authorizer;
use super::marks::EnqueuedMarks;
use super::partners::Partners;
use crate::broker::Broker;
use crate::config::Settings;
use crate::domain::webhook::WebhookSecrets;
use crate::store::Store;

/// The intake's limits, read once from the settings.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_clock_skew_ms: u64,
    pub max_wait: Duration,
    pub publish_timeout: Duration,
    pub request_timeout_ms: u64,
    /// How far back `/recoverNotifications` may reach (`push.log_retention_days`).
    pub push_retention: Duration,
}

impl Limits {
    pub fn from_settings(settings: &Settings) -> Self {
        Limits {
            max_body_bytes: settings.intake.max_body_bytes,
            max_clock_skew_ms: settings.intake.max_clock_skew_ms,
            max_wait: Duration::from_secs(settings.intake.max_wait_secs),
            publish_timeout: settings.publish_timeout(),
            request_timeout_ms: settings.intake.request_timeout_ms,
            push_retention: Duration::from_secs(
                u64::from(settings.push.log_retention_days) * 86_400,
            ),
        }
    }
}

#[derive(Debug)]
pub struct AppState {
    pub limits: Limits,
    /// Stripe, for `/stripeSubAuthorization` only.
    pub authorizer: std::sync::Arc<Authorizer>,
    /// Stripe's signing secrets, for `/stripe/webhook`.
    pub webhooks: WebhookSecrets,
    pub partners: Partners,
    pub broker: Broker,
    pub store: Store,
    pub marks: EnqueuedMarks,
    pub metrics: PrometheusHandle,
    /// Cancelled when the intake starts stopping: a `Prefer: wait` answers at once then.
    pub stopping: CancellationToken,
}
