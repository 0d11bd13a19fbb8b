//! `autorenew stripe-sim`: a stateful Stripe stand-in with Stripe's limits and faults
//! (docs/design.md#the-stripe-simulator-autorenew-stripe-sim). The embedded default for `autorenew run`, the tests, the benchmarks and the
//! fault drills. It shares no code with the Stripe gateway, so a misreading of Stripe in one
//! cannot hide in the other: this crate does not depend on the service crate (`autorenew`), and
//! the service library cannot name this one (docs/design.md, "Crates").
//!
//! # Stripe API (`/v1/…`, form-encoded, `Authorization: Bearer sk_test_…|sk_live_…` or HTTP Basic with the key as user name)
//! Customers (create, with `payment_method` attached there; retrieve, update, list by
//! `email`, search), payment methods (retrieve, attach, detach, list for a customer),
//! products and prices (create, retrieve, list; prices by `lookup_keys[]`), subscriptions
//! (create, retrieve, update `cancel_at_period_end`, list, search, cancel), invoices
//! (retrieve), webhook endpoints (create, list, retrieve, delete) and events (list with
//! `created`/`type` filters and paging, retrieve). Every change is recorded as Stripe's events
//! and delivered, signed, to the endpoints: see [`webhooks`]. Errors are
//! Stripe's: `{"error": {"type", "code", "decline_code", "param", "message"}}` with Stripe's
//! statuses; unknown parameters are refused as Stripe refuses them. Test payment methods:
//! see [`cards`]. Idempotency: see [`idempotency`].
//!
//! # Admin (`/_sim/…`, JSON, never limited or faulted)
//! - `GET /_sim/stats`: `{"requests": {"POST /v1/subscriptions": {"200": 1, "402": 1}},
//!   "requests_by_route": {"POST /v1/subscriptions": 2}, "requests_total": 2, "objects":
//!   {"customers": 1, …, "events": 9}, "subscriptions_by_pay_id": {"P1": 1}, "idempotency":
//!   {"keys", "in_flight", "replays"}, "faults": {"rate_limited", "spurious_429", "errors",
//!   "hangs", "lost_responses", "scripted", "saved_errors"}, "webhooks": {"attempts", "delivered",
//!   "failed_attempts", "given_up"}}`. A dropped connection counts under status `"dropped"`;
//!   unknown URLs under route `"unrecognized"`.
//! - `POST /_sim/advance` (`seconds=N`, form or query, or `{"seconds": N}`): moves the
//!   simulator's clock and renews, charges, retries and cancels what fell due (see
//!   [`billing`]); then delivers the webhooks this caused and answers once the first attempt of
//!   each has its answer (at most the delivery timeout, 10 s; `wait=false` answers at once):
//!   `{"now", "renewals", "payments_succeeded", "payments_failed", "canceled", "events",
//!   "webhooks": {"sent", "delivered", "failed", "pending"}}`. `GET /_sim/clock`:
//!   `{"now", "offset_seconds"}`.
//! - `POST /_sim/reset`: forget every object, event, key, count, script and clock offset; the
//!   configuration and the webhook endpoints given at start stay.
//! - `GET /_sim/config`: the [`faults::FaultConfig`] in force. `PATCH` sets the fields given,
//!   `POST` sets them over the defaults: `{"rate_limit": "test"|"live"|"off"|N,
//!   "rate_limit_burst": N, "latency_p50_ms": 20, "latency_p99_ms": 200, "error_rate": 0.01,
//!   "saved_error_rate": 0.01, "rate_limit_error_rate": 0.01, "hang_rate": 0.01, "hang_ms": 60000,
//!   "lost_response_rate": 0.01, "lost_response_mode": "error"|"drop", "search_delay_ms": 0,
//!   "declines_at": "attach"|"charge", "unknown_payment_methods": "good_card"|"missing",
//!   "invoice_shape": "current"|"legacy"|"both"}`.
//! - `POST /_sim/script`: `{"route": "POST /v1/subscriptions", "answers": [{"kind": "error",
//!   "status": 500}, {"kind": "lost_response", "mode": "drop"}, {"kind": "pass"}]}` (or a list
//!   of such) queues answers for the next requests to that route (`{id}` for path ids, a
//!   concrete path, or `*`). Kinds: `pass`, `delay` (`ms`), `error` (`status`, `type`, `code`,
//!   `decline_code`, `message`; nothing saved under the key), `saved_error` (a 500 saved under
//!   the key: retries with it get the same 500), `rate_limit`, `hang` (`ms`), `lost_response`
//!   (`mode`).
//!   Scripted requests skip the limiter and the random faults. `GET` shows what is queued,
//!   `DELETE` clears it.

mod admin;
mod api;
pub mod billing;
pub mod cards;
mod errors;
mod events;
pub mod faults;
mod form;
pub mod idempotency;
mod routes;
mod stats;
mod store;
pub mod webhooks;

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

use accept::next_connection;
use faults::{
    DeclinesAt, FaultConfig, InvoiceShape, Limiter, LostMode, Scripts, UnknownPaymentMethods,
};
use idempotency::Keys;
use secrecy::SecretString;
use stats::{Fault, Stats};
use store::Store;
use webhooks::{Courier, DeliveryPolicy, Endpoint, EndpointSettings, WebhookSettings};

/// Flags of `autorenew stripe-sim`. Every fault and limit can also be changed while it runs
/// (`PATCH /_sim/config`).
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:12111")]
    pub listen: String,
    /// Request-rate limit: `off`, `test` (Stripe's 25/s), `live` (100/s), or requests/s.
    #[arg(long, default_value = "off", value_parser = admin::parse_rate)]
    pub rate_limit: f64,
    /// Token-bucket size in requests (default: a tenth of a second's worth, at least 1).
    #[arg(long)]
    pub rate_limit_burst: Option<f64>,
    /// Latency before each answer: `MS` (fixed) or `P50:P99` in ms (log-normal).
    #[arg(long, default_value = "0", value_parser = parse_latency)]
    pub latency: (u64, u64),
    /// Share (0–1) of requests answered 500 `api_error`, nothing written, nothing saved.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Share (0–1) of requests that start, fail with a 500 `api_error` and save it under their
    /// idempotency key: nothing written, and retries with that key get the same 500.
    #[arg(long, default_value_t = 0.0)]
    pub saved_error_rate: f64,
    /// Share (0–1) of requests answered 429 `rate_limit` whatever the limiter says.
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit_error_rate: f64,
    /// Share (0–1) of requests that hang for `--hang-ms`, then answer 500.
    #[arg(long, default_value_t = 0.0)]
    pub hang_rate: f64,
    /// How long a hang lasts, in ms (longer than any sane client timeout).
    #[arg(long, default_value_t = 60_000)]
    pub hang_ms: u64,
    /// Share (0–1) of requests that write, then lose their answer (`--lost-response-mode`).
    #[arg(long, default_value_t = 0.0)]
    pub lost_response_rate: f64,
    /// How an answer is lost: `error` (a 500) or `drop` (the connection breaks).
    #[arg(long, value_enum, default_value = "error")]
    pub lost_response_mode: LostMode,
    /// Search misses objects younger than this, as Stripe's eventually consistent search does.
    #[arg(long, default_value_t = 0)]
    pub search_delay_ms: u64,
    /// When decline test cards decline: when attached (as Stripe) or only when charged.
    #[arg(long, value_enum, default_value = "attach")]
    pub declines_at: DeclinesAt,
    /// What an unseen well-formed `pm_…` id is: a good card, or missing (404).
    #[arg(long, value_enum, default_value = "good-card")]
    pub unknown_payment_methods: UnknownPaymentMethods,
    /// Where invoices name their subscription: `current` (`parent.subscription_details`),
    /// `legacy` (top-level `subscription`, `subscription_details`), or `both`.
    #[arg(long, value_enum, default_value = "current")]
    pub invoice_shape: InvoiceShape,
    /// Deliver events to this `http://` URL, as a webhook endpoint made at start.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// That endpoint's `whsec_…` signing secret (default: a fresh one, printed at start).
    #[arg(long, env = "STRIPE_SIM_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// The event types that endpoint gets, comma-separated; `*` is all.
    #[arg(long, default_value = "*", value_delimiter = ',')]
    pub webhook_events: Vec<String>,
    /// Tries per delivery (Stripe's three days of retries, compressed).
    #[arg(long, default_value_t = 6)]
    pub webhook_attempts: u32,
    /// Wait before the first retry of a delivery, in ms; each next wait doubles.
    #[arg(long, default_value_t = 1_000)]
    pub webhook_first_retry_ms: u64,
}

fn parse_latency(s: &str) -> Result<(u64, u64), String> {
    let number = |n: &str| {
        n.trim_end_matches("ms")
            .parse::<u64>()
            .map_err(|_| format!("latency must be MS or P50:P99 in ms, got {s}"))
    };
    match s.split_once(':') {
        None => number(s).map(|ms| (ms, ms)),
        Some((p50, p99)) => Ok((number(p50)?, number(p99)?)),
    }
}

/// What the simulator needs to start.
#[derive(Debug, Clone)]
pub struct SimSettings {
    pub listen: SocketAddr,
    pub faults: FaultConfig,
    /// Endpoints made at start (`run` points one at its own intake) and the delivery policy.
    pub webhooks: WebhookSettings,
}

impl SimSettings {
    /// A simulator for one machine: port 0 on localhost (any free port), no faults, no webhook
    /// endpoint. `autorenew run` starts this one on its `--sim-listen` with its intake as the
    /// endpoint; the tests and benchmarks start it as it is.
    pub fn laptop() -> Self {
        SimSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            faults: FaultConfig::default(),
            webhooks: WebhookSettings::default(),
        }
    }
}

impl TryFrom<SimArgs> for SimSettings {
    type Error = anyhow::Error;

    fn try_from(args: SimArgs) -> anyhow::Result<Self> {
        let listen = args.listen.parse().with_context(|| {
            format!(
                "--listen {:?} is not an address like 127.0.0.1:12111",
                args.listen
            )
        })?;
        let faults = FaultConfig {
            rate_limit_per_second: args.rate_limit,
            rate_limit_burst: args.rate_limit_burst,
            latency_p50_ms: args.latency.0,
            latency_p99_ms: args.latency.1,
            error_rate: args.error_rate,
            saved_error_rate: args.saved_error_rate,
            rate_limit_error_rate: args.rate_limit_error_rate,
            hang_rate: args.hang_rate,
            hang_ms: args.hang_ms,
            lost_response_rate: args.lost_response_rate,
            lost_response_mode: args.lost_response_mode,
            search_delay_ms: args.search_delay_ms,
            declines_at: args.declines_at,
            unknown_payment_methods: args.unknown_payment_methods,
            invoice_shape: args.invoice_shape,
        };
        faults.check().map_err(anyhow::Error::msg)?;
        let endpoints = match args.webhook_url {
            None => Vec::new(),
            Some(url) => vec![EndpointSettings {
                url,
                secret: args
                    .webhook_secret
                    .map_or_else(webhooks::new_secret, SecretString::from),
                enabled_events: args.webhook_events,
            }],
        };
        let delivery = DeliveryPolicy {
            attempts: args.webhook_attempts.max(1),
            first_retry: Duration::from_millis(args.webhook_first_retry_ms),
            ..DeliveryPolicy::default()
        };
        Ok(SimSettings {
            listen,
            faults,
            webhooks: WebhookSettings {
                endpoints,
                delivery,
            },
        })
    }
}

/// `autorenew stripe-sim`: serve until `shutdown`.
pub async fn run(args: SimArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let secret_given = args.webhook_secret.is_some();
    let settings = SimSettings::try_from(args)?;
    let app = Application::build(settings.clone())?;
    println!("stripe-sim listening on http://{}", app.address());
    for endpoint in &settings.webhooks.endpoints {
        println!("stripe-sim delivers webhooks to {}", endpoint.url);
        // As `stripe listen` does: the receiver needs the secret it did not choose. Printed
        // once to the terminal, never to the log.
        if !secret_given {
            use secrecy::ExposeSecret;
            println!(
                "webhook signing secret: {}",
                endpoint.secret.expose_secret()
            );
        }
    }
    app.run_until_stopped(shutdown).await
}

/// The faults stage's state: one lock, taken briefly once per API request.
#[derive(Debug)]
struct FaultState {
    config: FaultConfig,
    limiter: Limiter,
    scripts: Scripts,
}

/// State shared by every request. Each part has its own lock, held only for synchronous
/// work, never across an await.
#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    keys: Mutex<Keys>,
    faults: Mutex<FaultState>,
    stats: Mutex<Stats>,
    /// Cancelled on shutdown, so latency and hangs end at once instead of holding it up.
    stopping: CancellationToken,
    courier: Courier,
    /// The endpoints given at start, put back by `POST /_sim/reset`.
    configured_endpoints: Vec<Endpoint>,
}

/// A poisoned lock only means a request panicked mid-way; the data is still the best we
/// have, and a simulator that keeps answering is more useful than one that cascades.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }
    fn keys(&self) -> MutexGuard<'_, Keys> {
        lock(&self.keys)
    }
    fn faults(&self) -> MutexGuard<'_, FaultState> {
        lock(&self.faults)
    }
    fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }
    fn stats_record(&self, route: &'static str, status: u16) {
        self.stats().record(route, status);
    }
    fn stats_fault(&self, fault: Fault) {
        self.stats().fault(fault);
    }
    async fn sleep(&self, duration: Duration) {
        if duration.is_zero() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            () = self.stopping.cancelled() => {}
        }
    }
}

/// HTTP/2 streams one connection may have open: a worker's every call in flight (hyper's
/// default of 200 would queue the rest of a 2,000-job load test behind them).
const MAX_CONCURRENT_STREAMS: u32 = 10_000;

/// The simulator, bound and ready to serve.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    shared: Arc<Shared>,
}

impl Application {
    /// Binds the listen address (port 0: a free port) without serving yet.
    pub fn build(settings: SimSettings) -> anyhow::Result<Application> {
        settings.faults.check().map_err(anyhow::Error::msg)?;
        let mut store = Store::default();
        let configured_endpoints = settings
            .webhooks
            .endpoints
            .iter()
            .map(|e| Endpoint::from_settings(e, store.now()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("webhook endpoint: {e}"))?;
        store.webhook_endpoints.clone_from(&configured_endpoints);
        let listener = TcpListener::bind(settings.listen).map_err(|error| {
            accept::bind_failed(
                &error,
                settings.listen,
                "autorenew stripe-sim --listen, autorenew run --sim-listen",
                "e.g. --listen 127.0.0.1:12112 (port 0: any free port)",
            )
        })?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            keys: Mutex::default(),
            faults: Mutex::new(FaultState {
                config: settings.faults,
                limiter: Limiter::default(),
                scripts: Scripts::default(),
            }),
            stats: Mutex::default(),
            stopping: CancellationToken::new(),
            courier: Courier::new(settings.webhooks.delivery),
            configured_endpoints,
        });
        Ok(Application {
            listener,
            address,
            shared,
        })
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` is cancelled, then finishes the requests in hand.
    ///
    /// Speaks HTTP/1.1 and, to clients that start with its preface, HTTP/2 (h2c), with room for
    /// a load test's calls in flight on one connection.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let stopping = self.shared.stopping.clone();
        let app = Router::new()
            .merge(admin::router())
            .fallback(api::handle)
            .with_state(self.shared);
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http2().max_concurrent_streams(MAX_CONCURRENT_STREAMS);
        let graceful = GracefulShutdown::new();
        tracing::info!(address = %self.address, "stripe-sim listening");
        while let Some(stream) = next_connection(&listener, &shutdown).await {
            // Answers are small: without NODELAY, Nagle and delayed ACKs add ~40 ms to some.
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(app.clone());
            let connection = http
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
        }
        stopping.cancel();
        drop(listener);
        graceful.shutdown().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use secrecy::ExposeSecret;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn settings(argv: &[&str]) -> SimSettings {
        let flags =
            Flags::try_parse_from(std::iter::once("stripe-sim").chain(argv.iter().copied()))
                .expect("flags parse");
        SimSettings::try_from(flags.sim).expect("valid settings")
    }

    #[test]
    fn webhook_flags_make_one_endpoint_with_its_secret_events_and_retries() {
        let settings = settings(&[
            "--webhook-url",
            "http://127.0.0.1:8080/stripe/webhook",
            "--webhook-secret",
            "whsec_given",
            "--webhook-events",
            "invoice.paid,customer.subscription.deleted",
            "--webhook-attempts",
            "4",
            "--webhook-first-retry-ms",
            "250",
            "--invoice-shape",
            "legacy",
        ]);

        let [endpoint] = settings.webhooks.endpoints.as_slice() else {
            panic!("one endpoint");
        };
        assert_eq!(endpoint.url, "http://127.0.0.1:8080/stripe/webhook");
        assert_eq!(endpoint.secret.expose_secret(), "whsec_given");
        assert_eq!(
            endpoint.enabled_events,
            ["invoice.paid", "customer.subscription.deleted"]
        );
        assert_eq!(settings.webhooks.delivery.attempts, 4);
        assert_eq!(
            settings.webhooks.delivery.first_retry,
            Duration::from_millis(250)
        );
        assert_eq!(settings.faults.invoice_shape, InvoiceShape::Legacy);
    }

    #[test]
    fn without_a_secret_the_endpoint_gets_a_fresh_one_and_without_a_url_none_is_made() {
        let given = settings(&["--webhook-url", "http://127.0.0.1:8080/hook"]);
        let none = settings(&[]);

        let secret = given.webhooks.endpoints[0]
            .secret
            .expose_secret()
            .to_owned();
        assert!(
            secret.starts_with("whsec_") && secret.len() > 20,
            "{secret}"
        );
        assert_eq!(given.webhooks.endpoints[0].enabled_events, ["*"]);
        assert!(none.webhooks.endpoints.is_empty());
    }

    #[test]
    fn an_endpoint_the_simulator_cannot_reach_stops_it_at_start() {
        let settings = settings(&[
            "--listen",
            "127.0.0.1:0",
            "--webhook-url",
            "https://example.com/hook",
        ]);

        let error = Application::build(settings).err().expect("refused");
        assert!(error.to_string().contains("webhook endpoint"), "{error}");
    }
}
