//! `autorenew loadgen --push`: the partner push under load. Result events are published
//! straight to the results exchange, as the worker publishes them, for each pushing partner at
//! `--rate` each; `autorenew notifier` delivers them to `autorenew receiver`, which verifies
//! each signature and times each 2xx from the event's `time`. The report gives, per partner,
//! what was published, what arrived verified, the repeats, and the latency from the event's
//! `time` to the 2xx; and the throughput of all of them together.
//!
//! With `--baseline`, the same bodies go straight from the notifier's own HTTP client to the
//! receiver, signed, with nothing else (no broker, no Redis, no attempt log): the raw rate the
//! push's throughput is measured against.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::LoadgenArgs;
use super::baseline::connect;
use crate::config::Settings;
use crate::domain::event::CLOUDEVENTS_CONTENT_TYPE;
use crate::domain::push::{PushSecret, webhook_id};
use crate::push::PushClient;
/// Events per partner when neither `--requests` nor `--duration` is given.
const DEFAULT_EVENTS: u64 = 1000;
/// Events per second per partner when `--rate` is not given.
const DEFAULT_RATE: f64 = 50.0;
/// How often the receiver's counts are read while waiting for the deliveries.
const POLL: Duration = Duration::from_millis(200);

/// One partner's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartnerFigures {
    pub partner: String,
    pub published: u64,
    /// Distinct events answered with a 2xx.
    pub delivered: u64,
    /// 2xx answers beyond the first of each event (at-least-once repeats, each under its
    /// event's webhook-id).
    pub repeats: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
}

/// What a push run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushReport {
    /// `push` (through RabbitMQ and the notifier) or `baseline` (the client alone).
    pub mode: String,
    pub partners: Vec<PartnerFigures>,
    pub published: u64,
    pub delivered: u64,
    /// Publishes the broker did not confirm (`push`) or posts without a 2xx (`baseline`).
    pub failed_sends: u64,
    /// Distinct deliveries per second, from the first send to the last 2xx.
    pub deliveries_per_second: f64,
    pub seconds: f64,
    /// Events published but not delivered when the wait ended.
    pub missing: u64,
}

impl PushReport {
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "push load ({}): {} published, {} delivered, {} missing, {} failed sends, \
             {:.0} deliveries/s over {:.1} s\n",
            self.mode,
            self.published,
            self.delivered,
            self.missing,
            self.failed_sends,
            self.deliveries_per_second,
            self.seconds
        );
        out.push_str("partner      published  delivered  repeats   p50 ms    p99 ms    max ms\n");
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        for p in &self.partners {
            out.push_str(&format!(
                "{:<12} {:>9}  {:>9}  {:>7}  {:>7}  {:>8}  {:>8}\n",
                p.partner,
                p.published,
                p.delivered,
                p.repeats,
                ms(p.latency_p50_ms),
                ms(p.latency_p99_ms),
                ms(p.latency_max_ms)
            ));
        }
        out
    }
}

/// What the run needs, from the flags and the configuration.
struct PushPlan {
    partners: Vec<PushPartner>,
    receiver: url::Url,
    rate: f64,
    events: Option<u64>,
    duration: Option<Duration>,
    result_timeout: Duration,
    request_timeout: Duration,
    run_id: String,
}

struct PushPartner {
    code: String,
    secrets: Vec<PushSecret>,
}

impl PushPlan {
    fn new(settings: &Settings, args: &LoadgenArgs) -> anyhow::Result<Self> {
        let pushing: Vec<_> = settings
            .partners
            .iter()
            .filter(|p| p.push.is_some())
            .filter(|p| args.push_partners.is_empty() || args.push_partners.contains(&p.code))
            .collect();
        if let Some(unknown) = args
            .push_partners
            .iter()
            .find(|code| !pushing.iter().any(|p| &p.code == *code))
        {
            bail!("--push-partners: `{unknown}` is not a partner with [partners.push] configured");
        }
        if pushing.is_empty() {
            bail!("--push needs a partner with [partners.push] in the configuration");
        }
        let mut partners = Vec::new();
        for partner in pushing {
            let push = partner.push.as_ref().context("checked above")?;
            partners.push(PushPartner {
                code: partner.code.clone(),
                secrets: push.keys(),
            });
        }
        let rate = args.rate.unwrap_or(DEFAULT_RATE);
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be above 0");
        }
        let (events, duration) = match (args.requests, args.duration) {
            (Some(0), _) => bail!("--requests must be above 0"),
            (_, Some(d)) if d.is_zero() => bail!("--duration must be above 0"),
            (None, None) => (Some(DEFAULT_EVENTS), None),
            (events, duration) => (events, duration),
        };
        let receiver = url::Url::parse(&args.receiver)
            .map_err(|e| anyhow::anyhow!("--receiver `{}`: {e}", args.receiver))?;
        Ok(PushPlan {
            partners,
            receiver,
            rate,
            events,
            duration,
            result_timeout: args.result_timeout,
            request_timeout: args.request_timeout,
            run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        })
    }

    /// How many events each partner gets: `--requests`, else the rate over `--duration`.
    fn events_per_partner(&self) -> u64 {
        match (self.events, self.duration) {
            (Some(events), _) => events,
            (None, Some(duration)) => (self.rate * duration.as_secs_f64()).ceil() as u64,
            (None, None) => DEFAULT_EVENTS,
        }
    }
}

/// The event a worker would publish for `partner`'s `n`th payId, stamped now.
fn event(run_id: &str, partner: &str, n: u64, source: &str) -> (String, Vec<u8>) {
    let pay_id = format!("LGP{run_id}{n:07}");
    let id = format!("{partner}:{pay_id}:succeeded");
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let body = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": "autorenew.subscription.succeeded",
        "subject": pay_id,
        "time": now,
        "datacontenttype": "application/json",
        "data": {
            "payId": pay_id,
            "partnerCode": partner,
            "status": "active",
            "sub_id": format!("sub_lgp{run_id}{n}"),
            "completed_at": now,
        },
    });
    (id, body.to_string().into_bytes())
}

/// `autorenew loadgen --push`.
pub async fn run(
    settings: &Settings,
    args: &LoadgenArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<PushReport> {
    let plan = PushPlan::new(settings, args)?;
    let http = receiver_calls::Client::new(plan.request_timeout);
    http.reset(&plan.receiver).await?;
    let started = Instant::now();
    let wall_start_ms = now_ms();
    let (published, failed_sends, mode) = if args.baseline {
        let (published, failed) = post_directly(settings, &plan, shutdown).await?;
        (published, failed, "baseline")
    } else {
        let (published, failed) = publish(settings, &plan, shutdown).await?;
        (published, failed, "push")
    };
    let sending = started.elapsed();
    tracing::info!(?sending, "every event sent; waiting for the deliveries");

    // Wait until every published event arrived, or the timeout.
    let deadline = Instant::now() + plan.result_timeout;
    let mut counts = http.counts(&plan.receiver).await?;
    while !shutdown.is_cancelled() && Instant::now() < deadline {
        let all_in = plan
            .partners
            .iter()
            .all(|p| counts.get(&p.code).map_or(0, |c| c.delivered) >= published[&p.code]);
        if all_in {
            break;
        }
        tokio::time::sleep(POLL).await;
        counts = http.counts(&plan.receiver).await?;
    }

    let mut report = PushReport {
        mode: mode.to_owned(),
        partners: Vec::new(),
        published: 0,
        delivered: 0,
        failed_sends,
        deliveries_per_second: 0.0,
        seconds: 0.0,
        missing: 0,
    };
    let mut last_2xx_ms = wall_start_ms;
    for partner in &plan.partners {
        let sent = published[&partner.code];
        let got = counts.get(&partner.code).cloned().unwrap_or_default();
        last_2xx_ms = last_2xx_ms.max(got.last_2xx_at_ms.unwrap_or(0));
        report.published += sent;
        report.delivered += got.delivered;
        report.missing += sent.saturating_sub(got.delivered);
        report.partners.push(PartnerFigures {
            partner: partner.code.clone(),
            published: sent,
            delivered: got.delivered,
            repeats: got.answered_2xx.saturating_sub(got.delivered),
            latency_p50_ms: got.latency_ms.as_ref().map(|l| l.p50),
            latency_p99_ms: got.latency_ms.as_ref().map(|l| l.p99),
            latency_max_ms: got.latency_ms.as_ref().map(|l| l.max),
        });
    }
    report.seconds = last_2xx_ms.saturating_sub(wall_start_ms) as f64 / 1000.0;
    if report.seconds > 0.0 {
        report.deliveries_per_second = report.delivered as f64 / report.seconds;
    }
    Ok(report)
}

fn now_ms() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Publishes each partner's events to the results exchange at the plan's rate, with confirms;
/// (published per partner, publishes not confirmed).
async fn publish(
    settings: &Settings,
    plan: &PushPlan,
    shutdown: &CancellationToken,
) -> anyhow::Result<(HashMap<String, u64>, u64)> {
    let connection = connect(&settings.amqp.url, "autorenew-loadgen-push")
        .await
        .context("connecting to RabbitMQ for --push")?;
    let exchange = format!("{}.results", settings.amqp.prefix);
    let source = format!("urn:autorenew:{}:loadgen", settings.amqp.prefix);
    let failed = Arc::new(AtomicU64::new(0));
    let mut senders = JoinSet::new();
    for partner in &plan.partners {
        // A channel per partner: one partner's confirms never wait behind another's.
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("turning on publisher confirms")?;
        let (code, exchange, source) = (partner.code.clone(), exchange.clone(), source.clone());
        let (failed, shutdown, run_id) = (failed.clone(), shutdown.clone(), plan.run_id.clone());
        let (events, duration, rate) = (plan.events_per_partner(), plan.duration, plan.rate);
        let timeout = plan.request_timeout;
        senders.spawn(async move {
            let started = Instant::now();
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut confirms = JoinSet::new();
            let mut sent = 0_u64;
            let routing_key = format!("subscription.succeeded.{code}");
            while sent < events
                && !shutdown.is_cancelled()
                && duration.is_none_or(|d| started.elapsed() < d)
            {
                ticks.tick().await;
                let (id, body) = event(&run_id, &code, sent, &source);
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(CLOUDEVENTS_CONTENT_TYPE.into())
                    .with_message_id(id.into())
                    .with_type("autorenew.subscription.succeeded".into());
                let publish = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await;
                sent += 1;
                match publish {
                    Ok(confirm) => {
                        let failed = failed.clone();
                        confirms.spawn(async move {
                            match tokio::time::timeout(timeout, confirm).await {
                                Ok(Ok(Confirmation::Ack(_))) => {}
                                _ => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        });
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            while confirms.join_next().await.is_some() {}
            let _ = channel.close(200, "done".into()).await;
            (code, sent)
        });
    }
    let mut published = HashMap::new();
    while let Some(done) = senders.join_next().await {
        let (code, sent) = done.context("a publisher task ended")?;
        published.insert(code, sent);
    }
    let _ = connection.close(200, "done".into()).await;
    Ok((published, failed.load(Ordering::Relaxed)))
}

/// The baseline: the same bodies, signed, posted by the notifier's client straight to the
/// receiver at the plan's rate; (posted per partner, posts without a 2xx).
async fn post_directly(
    settings: &Settings,
    plan: &PushPlan,
    shutdown: &CancellationToken,
) -> anyhow::Result<(HashMap<String, u64>, u64)> {
    let client = PushClient::new(&settings.push)?;
    let source = format!("urn:autorenew:{}:loadgen", settings.amqp.prefix);
    let failed = Arc::new(AtomicU64::new(0));
    let mut senders = JoinSet::new();
    for partner in &plan.partners {
        let url = plan
            .receiver
            .join(&partner.code)
            .context("the receiver's URL")?
            .to_string();
        let (client, code, secrets) = (
            client.clone(),
            partner.code.clone(),
            partner.secrets.clone(),
        );
        let (failed, shutdown, run_id, source) = (
            failed.clone(),
            shutdown.clone(),
            plan.run_id.clone(),
            source.clone(),
        );
        let (events, duration, rate) = (plan.events_per_partner(), plan.duration, plan.rate);
        senders.spawn(async move {
            let started = Instant::now();
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut posts = JoinSet::new();
            let secrets = Arc::new(secrets);
            let mut sent = 0_u64;
            while sent < events
                && !shutdown.is_cancelled()
                && duration.is_none_or(|d| started.elapsed() < d)
            {
                ticks.tick().await;
                let (id, body) = event(&run_id, &code, sent, &source);
                sent += 1;
                let (client, url, secrets, failed) =
                    (client.clone(), url.clone(), secrets.clone(), failed.clone());
                posts.spawn(async move {
                    let attempted = client
                        .send(&url, &webhook_id(&id), &secrets, &Bytes::from(body))
                        .await;
                    if !attempted.delivered() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            while posts.join_next().await.is_some() {}
            (code, sent)
        });
    }
    let mut posted = HashMap::new();
    while let Some(done) = senders.join_next().await {
        let (code, sent) = done.context("a sender task ended")?;
        posted.insert(code, sent);
    }
    Ok((posted, failed.load(Ordering::Relaxed)))
}

/// The receiver's two calls, over a plain hyper client.
mod receiver_calls {
    use std::collections::HashMap;
    use std::time::Duration;

    use anyhow::{Context, bail};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper::{Method, Request};
    use hyper_util::client::legacy::Client as Hyper;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    use crate::push::receiver::Counts;

    pub struct Client {
        http: Hyper<HttpConnector, Empty<Bytes>>,
        timeout: Duration,
    }

    impl Client {
        pub fn new(timeout: Duration) -> Self {
            Client {
                http: Hyper::builder(TokioExecutor::new()).build_http(),
                timeout,
            }
        }

        async fn call(&self, method: Method, url: &url::Url) -> anyhow::Result<Bytes> {
            let request = Request::builder()
                .method(method)
                .uri(url.as_str())
                .body(Empty::new())
                .context("building the receiver request")?;
            let response = tokio::time::timeout(self.timeout, self.http.request(request))
                .await
                .map_err(|_| anyhow::anyhow!("the receiver at {url} did not answer in time"))?
                .with_context(|| format!("the receiver at {url}"))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .context("reading the receiver's answer")?
                .to_bytes();
            if !status.is_success() {
                bail!("the receiver at {url} answered {status}");
            }
            Ok(body)
        }

        /// Clears the receiver's counts, so the run's figures are its own.
        pub async fn reset(&self, receiver: &url::Url) -> anyhow::Result<()> {
            let url = receiver.join("/_receiver/stats")?;
            self.call(Method::DELETE, &url).await.map(|_| ())
        }

        pub async fn counts(&self, receiver: &url::Url) -> anyhow::Result<HashMap<String, Counts>> {
            let url = receiver.join("/_receiver/stats")?;
            let body = self.call(Method::GET, &url).await?;
            serde_json::from_slice(&body).context("the receiver's stats")
        }
    }
}
