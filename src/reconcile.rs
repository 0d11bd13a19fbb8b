//! `autorenew reconcile --since DURATION`: feeds the Stripe events the intake missed (it was down
//! longer than Stripe retries a delivery) through the same path as a webhook (docs/partners.md#the-rest-of-an-auto-renewals-life).
//!
//! It lists Stripe's events over the window, skips those the store records as taken, and
//! POSTs each other one, signed with the first configured webhook secret, to the intake's
//! `/stripe/webhook`. The intake then dedupes it by event id and enqueues it with its confirm,
//! exactly as a delivery from Stripe: so a run at any time, or twice, or racing a late delivery
//! from Stripe itself, makes at most one job per event.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::config::Settings;
use crate::domain::webhook::{SIGNATURE_HEADER, sign};
use crate::store::Store;
use crate::stripe::{ClientOptions, StripeHttp};

/// The event types the worker acts on (docs/partners.md#the-rest-of-an-auto-renewals-life); the others are not worth feeding.
pub const EVENT_TYPES: [&str; 4] = [
    "invoice.paid",
    "invoice.payment_failed",
    "customer.subscription.updated",
    "customer.subscription.deleted",
];
/// Stripe's largest page.
const PAGE: usize = 100;
const INTAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// How far back to look: a number and a unit, `s`, `m`, `h` or `d` (e.g. `72h`, `3d`).
    /// Stripe keeps events for 30 days.
    #[arg(long, value_parser = parse_duration)]
    pub since: Duration,
    /// The intake to feed (default: `http://` + `intake.listen`).
    #[arg(long, value_name = "URL")]
    pub intake: Option<url::Url>,
    /// With no `stripe.secret_key` configured: the simulator `autorenew run` started, whose
    /// events are read instead of Stripe's (default: `stripe.api_base`, else
    /// `http://127.0.0.1:12111`, `run`'s default `--sim-listen`).
    #[arg(long, value_name = "URL")]
    pub sim: Option<url::Url>,
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events of the four types Stripe listed over the window.
    pub listed: usize,
    /// Of those, the ones the store records as taken already.
    pub already_taken: usize,
    /// The others, posted to the intake and answered `2xx`.
    pub fed: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "listed {}, already taken {}, fed {}",
            self.listed, self.already_taken, self.fed
        )
    }
}

/// `90s`, `15m`, `72h`, `3d` (a plain number is seconds): the configuration's own reading.
pub use crate::config::parse_duration;

pub async fn run(settings: Settings, args: ReconcileArgs) -> anyhow::Result<()> {
    let intake = match args.intake {
        Some(url) => url,
        None => format!("http://{}", settings.intake.listen)
            .parse()
            .context("`intake.listen` does not make a URL: give --intake")?,
    };
    let settings = against_run_simulator(settings, args.sim.as_ref());
    let summary = reconcile(&settings, args.since, &intake).await?;
    println!("{summary}");
    Ok(())
}

/// With no Stripe key configured, `autorenew run` works against its own simulator, signing its
/// webhooks with [`crate::run::SIM_WEBHOOK_SECRET`] unless a secret is configured: reconcile
/// reads that simulator's events and signs with the same secret, so it needs no setup there.
/// With a key, the settings are used as they are.
pub fn against_run_simulator(mut settings: Settings, sim: Option<&url::Url>) -> Settings {
    if !settings.stripe.secret_key.expose_secret().is_empty() {
        return settings;
    }
    settings.stripe.api_base = match sim {
        Some(sim) => sim.as_str().trim_end_matches('/').to_owned(),
        None if settings.stripe.api_base.is_empty() => {
            format!("http://{}", crate::run::SIM_LISTEN)
        }
        None => settings.stripe.api_base,
    };
    println!(
        "no stripe.secret_key: reconciling the simulator of `autorenew run` at {}",
        settings.stripe.api_base
    );
    settings.stripe.secret_key = crate::run::SIM_KEY.to_owned().into();
    if settings.stripe.webhook_secrets.is_empty() {
        settings
            .stripe
            .webhook_secrets
            .push(crate::run::SIM_WEBHOOK_SECRET.to_owned().into());
    }
    settings
}

/// One page of `GET /v1/events`. Each event is kept as JSON to be posted on as it is.
#[derive(Debug, Deserialize)]
struct EventPage {
    data: Vec<serde_json::Value>,
    has_more: bool,
}

/// Lists the events created in the last `since`, and feeds those not taken to `intake`.
pub async fn reconcile(
    settings: &Settings,
    since: Duration,
    intake: &url::Url,
) -> anyhow::Result<Summary> {
    let secret =
        settings.stripe.webhook_secrets.first().context(
            "no `stripe.webhook_secrets`: the intake takes no events, so none can be fed",
        )?;
    let store = Store::new(&settings.redis)?;
    // A raw GET through our own client rather than async-stripe's `ListEvent`: its typed events
    // could not be posted on as Stripe wrote them (the worker reads the same JSON a delivery
    // carries), and its `event` feature would pull every event payload type into the build.
    let stripe = StripeHttp::new(&ClientOptions {
        secret_key: &settings.stripe.secret_key,
        api_base: &settings.stripe.api_base,
        timeout: Duration::from_millis(settings.stripe.request_timeout_ms),
        http2_prior_knowledge: settings.stripe.http2_prior_knowledge,
    })?;
    let webhook: Uri = intake
        .join("/stripe/webhook")
        .with_context(|| format!("`{intake}` cannot take the path /stripe/webhook"))?
        .as_str()
        .parse()
        .context("the intake's URL is not a URI")?;
    let http: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let from = now.saturating_sub(i64::try_from(since.as_secs()).unwrap_or(i64::MAX));
    let mut summary = Summary::default();
    let mut after: Option<String> = None;
    loop {
        // Brackets percent-encoded: a URI may not carry them bare.
        let mut query = format!("created%5Bgte%5D={from}&limit={PAGE}");
        for kind in EVENT_TYPES {
            query.push_str("&types%5B%5D=");
            query.push_str(kind);
        }
        if let Some(after) = &after {
            query.push_str("&starting_after=");
            query.push_str(after);
        }
        let body = stripe
            .get_raw("/events", &query)
            .await
            .context("listing Stripe's events")?;
        let page: EventPage =
            serde_json::from_slice(&body).context("Stripe's event list does not parse")?;
        for event in &page.data {
            let id = event["id"]
                .as_str()
                .context("an event without an id in Stripe's list")?;
            summary.listed += 1;
            if store.is_enqueued(&store.stripe_event_record(id)).await? {
                summary.already_taken += 1;
                continue;
            }
            feed(&http, &webhook, event, secret.expose_secret())
                .await
                .with_context(|| format!("feeding event {id}"))?;
            tracing::info!(event_id = %id, "missed Stripe event fed to the intake");
            summary.fed += 1;
        }
        after = match page.data.last() {
            Some(last) if page.has_more => last["id"].as_str().map(str::to_owned),
            _ => None,
        };
        if after.is_none() {
            return Ok(summary);
        }
    }
}

/// POSTs one event to the intake, signed as Stripe signs a delivery.
async fn feed(
    http: &Client<HttpConnector, Full<Bytes>>,
    webhook: &Uri,
    event: &serde_json::Value,
    secret: &str,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(event)?;
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = sign(&body, secret, timestamp);
    let request = Request::builder()
        .method(Method::POST)
        .uri(webhook.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(Full::new(Bytes::from(body)))?;
    let response = tokio::time::timeout(INTAKE_TIMEOUT, http.request(request))
        .await
        .context("the intake did not answer in time")?
        .context("the intake cannot be reached")?;
    let status = response.status();
    if !status.is_success() {
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::bail!(
            "the intake answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_their_unit() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(
            parse_duration("72h").unwrap(),
            Duration::from_secs(72 * 3600)
        );
        assert_eq!(
            parse_duration("3d").unwrap(),
            Duration::from_secs(3 * 86_400)
        );
        assert_eq!(parse_duration("72").unwrap(), Duration::from_secs(72));
        for bad in ["", "h", "72w", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
