//! Webhook endpoints and the deliveries to them: each event POSTed to every endpoint whose
//! `enabled_events` names it (or `*`), signed as Stripe signs (docs/partners.md#stripes-webhooks), retried on a
//! non-`2xx` answer or a failed connection on a compressed copy of Stripe's schedule.
//!
//! Deliveries run in their own tasks and never hold up an API answer. Like Stripe's, they are
//! not ordered: a retry of an old event may arrive after a newer one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Semaphore;

use super::Shared;
use super::stats::Delivered;
use super::store::{Metadata, new_id, wall_clock};

/// One endpoint given at start (`--webhook-url`, `--webhook-secret`, or `run`'s own intake).
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    /// Where events are POSTed: `http://host:port/path` (the simulator speaks plain HTTP).
    pub url: String,
    /// The `whsec_…` secret deliveries are signed with.
    pub secret: SecretString,
    /// Event types to deliver; `*` is every type.
    pub enabled_events: Vec<String>,
}

/// How deliveries are made and retried. Stripe retries for up to three days with exponential
/// backoff; the simulator keeps the shape and shrinks the time: `first_retry`, then twice as
/// long each time, `attempts` tries in all.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryPolicy {
    pub attempts: u32,
    pub first_retry: Duration,
    /// How long one try may take before it counts as failed.
    pub timeout: Duration,
    /// Tries in flight at once, across endpoints: a load test makes events by the thousand,
    /// and a receiver should see Stripe's steady stream, not thousands of connections.
    pub max_in_flight: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            attempts: 6,
            first_retry: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            max_in_flight: 64,
        }
    }
}

/// Webhooks configured at start.
#[derive(Debug, Clone, Default)]
pub struct WebhookSettings {
    pub endpoints: Vec<EndpointSettings>,
    pub delivery: DeliveryPolicy,
}

/// A webhook endpoint the simulator holds.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub created: i64,
    pub url: Uri,
    pub enabled_events: Vec<String>,
    pub secret: SecretString,
    pub description: Option<String>,
    pub metadata: Metadata,
}

impl Endpoint {
    pub fn wants(&self, kind: &str) -> bool {
        self.enabled_events.iter().any(|e| e == "*" || e == kind)
    }

    pub fn delivery(&self, event_id: &str, body: Bytes) -> Delivery {
        Delivery {
            event_id: event_id.to_owned(),
            url: self.url.clone(),
            secret: self.secret.clone(),
            body,
        }
    }
}

/// The URL of an endpoint, checked: plain `http` with a host, as the simulator delivers.
pub fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("Invalid URL: {url} is not a URL."))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) => Ok(uri),
        (Some("https"), _) => Err(format!(
            "Invalid URL: {url}: the simulator delivers over plain http only (it has no TLS)."
        )),
        _ => Err(format!(
            "Invalid URL: {url} must be an http URL with a host."
        )),
    }
}

/// A fresh `whsec_…` secret. Not from a cryptographic source: it guards a test endpoint
/// against mix-ups, not against an attacker.
pub fn new_secret() -> SecretString {
    let mut secret = String::from("whsec_");
    for _ in 0..32 {
        secret.push(fastrand::alphanumeric());
    }
    SecretString::from(secret)
}

/// Stripe's WebhookEndpoint object. The secret is shown only in the answer to a create, as
/// Stripe shows it.
pub fn render_endpoint(e: &Endpoint, with_secret: bool) -> Value {
    let mut value = json!({
        "id": e.id, "object": "webhook_endpoint", "api_version": null, "application": null,
        "created": e.created, "description": e.description, "enabled_events": e.enabled_events,
        "livemode": false, "metadata": e.metadata, "status": "enabled", "url": e.url.to_string(),
    });
    if with_secret {
        value["secret"] = json!(e.secret.expose_secret());
    }
    value
}

impl Endpoint {
    pub fn from_settings(settings: &EndpointSettings, created: i64) -> Result<Endpoint, String> {
        if settings.enabled_events.is_empty() {
            return Err("a webhook endpoint needs at least one enabled event (or *)".into());
        }
        Ok(Endpoint {
            id: new_id("we"),
            created,
            url: parse_url(&settings.url)?,
            enabled_events: settings.enabled_events.clone(),
            secret: settings.secret.clone(),
            description: None,
            metadata: Metadata::new(),
        })
    }
}

/// One event on its way to one endpoint.
pub struct Delivery {
    event_id: String,
    url: Uri,
    secret: SecretString,
    body: Bytes,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("event_id", &self.event_id)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // An HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let v1 = hex::encode(mac.finalize().into_bytes());
    format!("t={timestamp},v1={v1}")
}

/// The HTTP client deliveries share, their policy, and the permits for tries in flight.
#[derive(Debug, Clone)]
pub struct Courier {
    client: Client<HttpConnector, Full<Bytes>>,
    policy: DeliveryPolicy,
    in_flight: Arc<Semaphore>,
}

impl Courier {
    pub fn new(policy: DeliveryPolicy) -> Courier {
        Courier {
            client: Client::builder(TokioExecutor::new()).build_http(),
            policy,
            in_flight: Arc::new(Semaphore::new(policy.max_in_flight.max(1))),
        }
    }

    /// How long one try may take.
    pub fn timeout(&self) -> Duration {
        self.policy.timeout
    }

    /// One try: `Ok` for a `2xx` answer, else why not.
    async fn post(&self, delivery: &Delivery) -> Result<(), String> {
        // Stripe signs each attempt anew, with the wall clock's time: the receiver's
        // tolerance is measured against its own clock, whatever the simulator's says.
        let signed = signature(
            delivery.secret.expose_secret(),
            wall_clock(),
            &delivery.body,
        );
        let request = Request::post(delivery.url.clone())
            .header("content-type", "application/json; charset=utf-8")
            .header(
                "user-agent",
                "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            )
            .header("stripe-signature", signed)
            .body(Full::new(delivery.body.clone()))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.policy.timeout, self.client.request(request)).await {
            Err(_) => Err("timed out".into()),
            Ok(Err(error)) => Err(error.to_string()),
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(format!("answered {}", response.status())),
        }
    }
}

/// How the first attempts of an advance's deliveries went, for its answer.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct FirstAttempts {
    /// Deliveries started (one per event and endpoint that wants it).
    pub sent: usize,
    /// Answered `2xx` at the first attempt: the receiver has the event.
    pub delivered: usize,
    /// Refused or failed at the first attempt; retried on the schedule.
    pub failed: usize,
    /// Not answered within the wait; still going.
    pub pending: usize,
}

impl Shared {
    /// Starts each delivery in a task of its own.
    pub(super) fn deliver(self: &Arc<Self>, deliveries: Vec<Delivery>) {
        for delivery in deliveries {
            tokio::spawn(deliver(Arc::clone(self), delivery, None));
        }
    }

    /// Starts each delivery as [`Shared::deliver`] does, and waits (at most `limit`) until the
    /// first attempt of each has its answer: an advance that answers only then leaves no window
    /// in which its events are neither delivered nor known to have failed.
    pub(super) async fn deliver_and_wait(
        self: &Arc<Self>,
        deliveries: Vec<Delivery>,
        limit: Duration,
    ) -> FirstAttempts {
        let mut answers = tokio::task::JoinSet::new();
        let sent = deliveries.len();
        for delivery in deliveries {
            let (first, answered) = tokio::sync::oneshot::channel();
            tokio::spawn(deliver(Arc::clone(self), delivery, Some(first)));
            answers.spawn(answered);
        }
        let mut report = FirstAttempts {
            sent,
            ..FirstAttempts::default()
        };
        let deadline = tokio::time::Instant::now() + limit;
        while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.join_next()).await {
            match answer {
                Ok(Ok(true)) => report.delivered += 1,
                _ => report.failed += 1,
            }
        }
        report.pending = sent - report.delivered - report.failed;
        report
    }
}

/// Delivers one event, retrying on the schedule; `first` learns how the first attempt went.
async fn deliver(
    shared: Arc<Shared>,
    delivery: Delivery,
    mut first: Option<tokio::sync::oneshot::Sender<bool>>,
) {
    let policy = shared.courier.policy;
    let mut wait = policy.first_retry;
    for attempt in 1..=policy.attempts.max(1) {
        if shared.stopping.is_cancelled() {
            return;
        }
        // A permit per try, not per delivery: a delivery waiting out its backoff holds none.
        let Ok(_permit) = shared.courier.in_flight.acquire().await else {
            return;
        };
        shared.stats().delivery(Delivered::Attempt);
        let answer = shared.courier.post(&delivery).await;
        if let Some(first) = first.take() {
            let _ = first.send(answer.is_ok());
        }
        match answer {
            Ok(()) => {
                shared.stats().delivery(Delivered::Ok);
                shared.store().events.delivered(&delivery.event_id);
                return;
            }
            Err(why) => {
                shared.stats().delivery(Delivered::Failed);
                tracing::debug!(
                    event = %delivery.event_id, url = %delivery.url, attempt, %why,
                    "webhook delivery failed"
                );
            }
        }
        if attempt < policy.attempts {
            shared.sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
    }
    shared.stats().delivery(Delivered::GaveUp);
    tracing::info!(event = %delivery.event_id, url = %delivery.url, "webhook delivery given up");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_stripe_s_hmac_of_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"id":"evt_1"}' |
        //   openssl dgst -sha256 -hmac whsec_test
        let signed = signature("whsec_test", 1_700_000_000, br#"{"id":"evt_1"}"#);
        assert_eq!(
            signed,
            "t=1700000000,v1=c89214b5b5da833daed6f0b8c5bb6bd58cea9022bd80ccc78230f3942d632925"
        );
    }

    #[test]
    fn only_plain_http_urls_with_a_host_are_endpoints() {
        assert!(parse_url("http://127.0.0.1:8080/stripe/webhook").is_ok());
        assert!(parse_url("https://example.com/hook").is_err());
        assert!(parse_url("/stripe/webhook").is_err());
    }
}
