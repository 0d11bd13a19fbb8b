//! `autorenew receiver` (docs/operations.md#the-partner-push): a partner's endpoint for the laptop, the tests and
//! the load generator. `POST /<partner>` checks the signature and the timestamp, counts and
//! prints what arrives, and answers as that path was told: `PUT /_receiver/behaviour/<partner>`
//! with `{"status": 503, "delay_ms": 2000, "never": false, "retry_after": "5"}`.
//! `GET /_receiver/stats` counts per partner, with the latency of each 2xx from its event's
//! `time` (what `autorenew loadgen --push` reports); `DELETE /_receiver/stats` starts afresh.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::push::{self, PushSecret};

#[derive(Debug, clap::Args)]
pub struct ReceiverArgs {
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// A push secret (`whsec_…`) that verifies; repeat it for several. Default: every
    /// partner's push secrets in the configuration.
    #[arg(
        long = "secret",
        env = "AUTORENEW_RECEIVER_SECRET",
        value_delimiter = ','
    )]
    pub secrets: Vec<String>,
    /// A push signed further than this from now is refused (replays).
    #[arg(long, default_value_t = 300)]
    pub tolerance_secs: u64,
    /// Count only; print nothing per push.
    #[arg(long)]
    pub quiet: bool,
}

/// How a path answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Behaviour {
    /// The answer's status (default 200).
    pub status: Option<u16>,
    pub delay_ms: u64,
    /// Take the request and never answer.
    pub never: bool,
    /// `Retry-After` on the answer.
    pub retry_after: Option<String>,
}

/// One push as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub webhook_id: String,
    pub timestamp: String,
    pub signature: String,
    pub content_type: String,
    pub user_agent: String,
    pub body: Bytes,
    pub verified: bool,
}

/// A path's counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub received: u64,
    pub verified: u64,
    pub refused: u64,
    /// Distinct webhook-ids verified.
    pub distinct: u64,
    /// Answers with a 2xx.
    pub answered_2xx: u64,
    /// Distinct webhook-ids answered with a 2xx: delivered, as the notifier counts it.
    pub delivered: u64,
    /// From the event's `time` to the 2xx, over every 2xx whose body carries a `time`.
    pub latency_ms: Option<Latency>,
    /// When the first and the last 2xx went out (ms since the epoch).
    pub first_2xx_at_ms: Option<u64>,
    pub last_2xx_at_ms: Option<u64>,
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// The figures of `samples` (sorted here), None when empty.
    fn of(samples: &mut [f64]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (q * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Some(Latency {
            count: samples.len() as u64,
            p50: at(0.50),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        })
    }
}

#[derive(Default)]
struct Inbox {
    arrivals: Vec<Arrival>,
    ids: HashSet<String>,
    delivered_ids: HashSet<String>,
    counts: Counts,
    /// Event `time` to 2xx, ms, up to [`LATENCIES_KEPT`].
    latencies: Vec<f64>,
}

/// What the receiver holds; tests read it in-process.
pub struct Receiver {
    secrets: Vec<PushSecret>,
    tolerance_secs: u64,
    quiet: bool,
    paths: Mutex<HashMap<String, Inbox>>,
    behaviours: Mutex<HashMap<String, Behaviour>>,
}

/// How many arrivals a path keeps for inspection.
const KEPT: usize = 10_000;
/// How many latencies a path keeps: a 2,000/s run of ten minutes.
const LATENCIES_KEPT: usize = 1_200_000;

impl Receiver {
    pub fn new(secrets: Vec<PushSecret>, tolerance_secs: u64, quiet: bool) -> Self {
        Receiver {
            secrets,
            tolerance_secs,
            quiet,
            paths: Mutex::new(HashMap::new()),
            behaviours: Mutex::new(HashMap::new()),
        }
    }

    pub fn behave(&self, partner: &str, behaviour: Behaviour) {
        lock(&self.behaviours).insert(partner.to_owned(), behaviour);
    }

    pub fn arrivals(&self, partner: &str) -> Vec<Arrival> {
        lock(&self.paths)
            .get(partner)
            .map(|p| p.arrivals.clone())
            .unwrap_or_default()
    }

    pub fn counts(&self, partner: &str) -> Counts {
        lock(&self.paths)
            .get(partner)
            .map(Inbox::counts)
            .unwrap_or_default()
    }

    /// Counts the 2xx about to be sent for `body`, and its latency from the event's `time`.
    fn answered(&self, partner: &str, webhook_id: &str, body: &[u8]) {
        let now = time::OffsetDateTime::now_utc();
        let now_ms = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let latency = event_time(body).map(|at| (now - at).as_seconds_f64() * 1000.0);
        let mut paths = lock(&self.paths);
        let path = paths.entry(partner.to_owned()).or_default();
        path.counts.answered_2xx += 1;
        if path.delivered_ids.insert(webhook_id.to_owned()) {
            path.counts.delivered += 1;
        }
        path.counts.first_2xx_at_ms.get_or_insert(now_ms);
        path.counts.last_2xx_at_ms = Some(now_ms);
        if let Some(latency) = latency
            && path.latencies.len() < LATENCIES_KEPT
        {
            path.latencies.push(latency);
        }
    }

    fn reset(&self) {
        lock(&self.paths).clear();
    }

    fn take(&self, partner: &str, headers: &HeaderMap, body: Bytes) -> bool {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let arrival = Arrival {
            webhook_id: header(push::ID_HEADER),
            timestamp: header(push::TIMESTAMP_HEADER),
            signature: header(push::SIGNATURE_HEADER),
            content_type: header("content-type"),
            user_agent: header("user-agent"),
            body,
            verified: false,
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let verdict = match arrival.timestamp.parse::<i64>() {
            Ok(timestamp) => push::verify(
                &self.secrets,
                &arrival.webhook_id,
                timestamp,
                &arrival.signature,
                &arrival.body,
                now,
                self.tolerance_secs,
            )
            .map_err(|e| e.to_string()),
            Err(_) => Err("no readable webhook-timestamp".to_owned()),
        };
        let verified = verdict.is_ok();
        if !self.quiet {
            match &verdict {
                Ok(()) => println!(
                    "{partner} {} verified {}",
                    arrival.webhook_id,
                    String::from_utf8_lossy(&arrival.body)
                ),
                Err(reason) => println!("{partner} {} REFUSED: {reason}", arrival.webhook_id),
            }
        }
        let mut paths = lock(&self.paths);
        let path = paths.entry(partner.to_owned()).or_default();
        path.counts.received += 1;
        if verified {
            path.counts.verified += 1;
            if path.ids.insert(arrival.webhook_id.clone()) {
                path.counts.distinct += 1;
            }
        } else {
            path.counts.refused += 1;
        }
        if path.arrivals.len() < KEPT {
            path.arrivals.push(Arrival {
                verified,
                ..arrival
            });
        }
        verified
    }
}

impl Inbox {
    fn counts(&self) -> Counts {
        Counts {
            latency_ms: Latency::of(&mut self.latencies.clone()),
            ..self.counts.clone()
        }
    }
}

/// The `time` of the event in a push body, if it has one.
fn event_time(body: &[u8]) -> Option<time::OffsetDateTime> {
    #[derive(Deserialize)]
    struct Head {
        time: String,
    }
    let head: Head = serde_json::from_slice(body).ok()?;
    time::OffsetDateTime::parse(&head.time, &time::format_description::well_known::Rfc3339).ok()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    Path(partner): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !receiver.take(&partner, &headers, body.clone()) {
        return (
            StatusCode::BAD_REQUEST,
            "signature or timestamp does not verify",
        )
            .into_response();
    }
    let behaviour = lock(&receiver.behaviours)
        .get(&partner)
        .cloned()
        .unwrap_or_default();
    if behaviour.never {
        std::future::pending::<()>().await;
    }
    if behaviour.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.delay_ms)).await;
    }
    let status = behaviour
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if status.is_success() {
        let webhook_id = headers
            .get(push::ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        receiver.answered(&partner, webhook_id, &body);
    }
    let mut response = (status, "").into_response();
    if let Some(value) = behaviour
        .retry_after
        .and_then(|v| axum::http::HeaderValue::from_str(&v).ok())
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

async fn set_behaviour(
    State(receiver): State<Arc<Receiver>>,
    Path(partner): Path<String>,
    Json(behaviour): Json<Behaviour>,
) -> StatusCode {
    receiver.behave(&partner, behaviour);
    StatusCode::NO_CONTENT
}

async fn stats(State(receiver): State<Arc<Receiver>>) -> Json<HashMap<String, Counts>> {
    let paths = lock(&receiver.paths);
    Json(
        paths
            .iter()
            .map(|(partner, path)| (partner.clone(), path.counts()))
            .collect(),
    )
}

async fn reset(State(receiver): State<Arc<Receiver>>) -> StatusCode {
    receiver.reset();
    StatusCode::NO_CONTENT
}

/// The receiver, bound and ready to serve.
pub struct Application {
    listener: TcpListener,
    receiver: Arc<Receiver>,
}

impl Application {
    pub async fn build(listen: SocketAddr, receiver: Receiver) -> anyhow::Result<Self> {
        Ok(Application {
            listener: TcpListener::bind(listen).await?,
            receiver: Arc::new(receiver),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn receiver(&self) -> Arc<Receiver> {
        self.receiver.clone()
    }

    /// Serves until `shutdown`; requests told to never answer are dropped then.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let router = Router::new()
            .route("/_receiver/stats", get(stats).delete(reset))
            .route("/_receiver/behaviour/{partner}", put(set_behaviour))
            .route("/{partner}", post(receive))
            .with_state(self.receiver);
        tokio::select! {
            served = axum::serve(self.listener, router) => served?,
            () = shutdown.cancelled() => {}
        }
        Ok(())
    }
}

/// `autorenew receiver`.
pub async fn run(
    settings: crate::config::Settings,
    args: ReceiverArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let texts: Vec<String> = if args.secrets.is_empty() {
        settings
            .partners
            .iter()
            .filter_map(|p| p.push.as_ref())
            .flat_map(|push| push.secrets.iter())
            .map(|s| secrecy::ExposeSecret::expose_secret(s).to_owned())
            .collect()
    } else {
        args.secrets.clone()
    };
    let mut secrets = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        secrets.push(
            PushSecret::parse(text)
                .map_err(|reason| anyhow::anyhow!("secret {}: {reason}", index + 1))?,
        );
    }
    if secrets.is_empty() {
        anyhow::bail!(
            "no secret to verify with: give --secret whsec_… or configure a partner's [partners.push]"
        );
    }
    let app = Application::build(
        args.listen,
        Receiver::new(secrets, args.tolerance_secs, args.quiet),
    )
    .await?;
    println!(
        "autorenew receiver on http://{}: POST /<partner>; PUT /_receiver/behaviour/<partner>; GET|DELETE /_receiver/stats",
        app.local_addr()
    );
    app.run_until_stopped(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_figures_are_nearest_rank_percentiles() {
        let mut samples: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        let figures = Latency::of(&mut samples).expect("figures");
        assert_eq!(figures.count, 200);
        assert_eq!(figures.p50, 100.0);
        assert_eq!(figures.p99, 198.0);
        assert_eq!(figures.max, 200.0);
        assert_eq!(Latency::of(&mut []), None);
    }

    #[test]
    fn an_event_s_time_is_read_from_the_body_and_anything_else_has_none() {
        let body = br#"{"id":"x","time":"2027-01-15T08:00:00.250Z","data":{}}"#;
        let at = event_time(body).expect("a time");
        assert_eq!(at.unix_timestamp(), 1_800_000_000);
        assert_eq!(at.millisecond(), 250);
        assert_eq!(event_time(b"{\"id\":\"x\"}"), None);
        assert_eq!(event_time(b"not json"), None);
    }
}
