//! Logging (tracing) and metrics (Prometheus text from the `metrics` facade).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{IntakeSettings, LogSettings, Settings, StripeSettings, WorkerSettings};
use names::worker::{BROKER_CONNECTED, CONSUMING, JOBS_IN_HAND};
use names::{BUILD_INFO, intake, push, stripe, worker};

/// Sets up logging once per process; later calls (tests that build several apps) are no-ops.
pub fn init_logging(settings: &LogSettings) {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The Stripe client and its HTTP stack log request paths at debug level, and those paths
    // carry payment method ids: they stay at info whatever the filter asks.
    for quiet in [
        "stripe=info",
        "hyper_util=info",
        "hyper=info",
        "reqwest=info",
    ] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already set, which is fine to ignore.
    let _ = if settings.json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Every metric's name, in one place: the parts that record a metric import its name from
/// here, and nothing here imports from them. Grouped by the part that records it.
pub mod names {
    /// A build's identity: `autorenew_build_info{version="0.1.0"} 1`.
    pub const BUILD_INFO: &str = "autorenew_build_info";

    /// The HTTP intake.
    pub mod intake {
        /// Answers by `route`, HTTP `status` and `code` (`S`, or the `errorCode`).
        pub const REQUESTS_TOTAL: &str = "autorenew_intake_requests_total";
        pub const REQUEST_SECONDS: &str = "autorenew_intake_request_duration_seconds";
        /// Claim to confirm, for a creation this request put on the broker.
        pub const ENQUEUE_SECONDS: &str = "autorenew_intake_enqueue_duration_seconds";
        /// Signs that did not verify, by the (configured) partner they claimed.
        pub const SIGN_INVALID_TOTAL: &str = "autorenew_intake_sign_invalid_total";
        /// Stripe's deliveries to `/stripe/webhook`, by event `type` and `outcome`.
        pub const WEBHOOK_EVENTS_TOTAL: &str = "autorenew_webhook_events_total";
    }

    /// The worker.
    pub mod worker {
        pub const JOBS_TOTAL: &str = "autorenew_worker_jobs_total";
        pub const JOB_SECONDS: &str = "autorenew_worker_job_duration_seconds";
        /// Stripe events seen by the worker, by type and what became of them.
        pub const STRIPE_EVENTS_TOTAL: &str = "autorenew_worker_stripe_events_total";
        /// Jobs a worker process has taken and not yet finished (acked, handed back or
        /// dead-lettered).
        pub const JOBS_IN_HAND: &str = "autorenew_worker_jobs_in_hand";
        /// 1 while the worker's RabbitMQ connection is up.
        pub const BROKER_CONNECTED: &str = "autorenew_worker_broker_connected";
        /// 1 while the worker has a consumer on the jobs queue.
        pub const CONSUMING: &str = "autorenew_worker_consuming";
    }

    /// The Stripe gateway.
    pub mod stripe {
        /// Stripe calls made, after the budget let them go, by operation (`customers.list`, …).
        pub const CALLS_TOTAL: &str = "autorenew_stripe_requests_total";
        /// Stripe calls that failed, by operation and what the failure was (`429`, `500`,
        /// `timeout`, …).
        pub const ERRORS_TOTAL: &str = "autorenew_stripe_errors_total";
        /// How long calls waited for the shared budget.
        pub const BUDGET_WAIT_SECONDS: &str = "autorenew_stripe_budget_wait_seconds";
    }

    /// The partner push.
    pub mod push {
        /// Event `time` to the 2xx, with `attempt` `first` or `retry`.
        pub const DELIVERY_SECONDS: &str = "autorenew_push_delivery_seconds";
        /// Attempts by `partner` and `outcome` (`delivered`, `gone`, `http_4xx`, `timeout`, …).
        pub const ATTEMPTS_TOTAL: &str = "autorenew_push_attempts_total";
        /// Undelivered events per partner, still tried.
        pub const PENDING: &str = "autorenew_push_pending";
        /// Events per partner whose schedule is spent, kept for recovery.
        pub const FAILED: &str = "autorenew_push_failed";
        /// Per partner: 0 closed, 1 open, 2 half-open.
        pub const BREAKER_STATE: &str = "autorenew_push_breaker_state";
        /// Per partner: 1 while its push is disabled.
        pub const DISABLED: &str = "autorenew_push_disabled";
    }
}

/// The usual latency ladder; each histogram keeps the rungs below its longest wait and ends on it.
const LADDER: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 450.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0,
];

/// Stripe calls one job makes at most (customer lookup and creation, attach, default, subscription).
const STRIPE_STEPS_PER_JOB: u64 = 5;

/// The buckets of each `_seconds` histogram, chosen so that the top one reaches the longest time
/// that histogram can record under these settings; a top bucket below it would put every slow answer
/// in `+Inf`, where no quantile can be read.
pub fn histogram_buckets(
    intake: &IntakeSettings,
    stripe: &StripeSettings,
    worker: &WorkerSettings,
) -> Vec<(&'static str, Vec<f64>)> {
    let publish = intake.publish_timeout_ms as f64 / 1000.0;
    // A held answer: the body's arrival, the claim and confirm, then `Prefer: wait` itself.
    let answer =
        intake.request_timeout_ms as f64 / 1000.0 + 2.0 * publish + intake.max_wait_secs as f64;
    let stripe_call = stripe.request_timeout_ms as f64 / 1000.0;
    // Every step's quick retries, each a whole call plus its longest backoff.
    let tries = u64::from(worker.step_retries) + 1;
    let job = (STRIPE_STEPS_PER_JOB * tries) as f64
        * (stripe_call + worker.retry_max_delay_ms as f64 / 1000.0);
    vec![
        (intake::REQUEST_SECONDS, ladder_to(answer)),
        (intake::ENQUEUE_SECONDS, ladder_to(2.0 * publish)),
        (stripe::BUDGET_WAIT_SECONDS, ladder_to(stripe_call)),
        (worker::JOB_SECONDS, ladder_to(job)),
    ]
}

fn ladder_to(longest: f64) -> Vec<f64> {
    let mut buckets: Vec<f64> = LADDER.iter().copied().filter(|b| *b < longest).collect();
    buckets.push(longest);
    buckets
}

static BUCKETS: OnceLock<Vec<(&'static str, Vec<f64>)>> = OnceLock::new();

/// Sizes the histograms for `settings`. Call before anything records (start-up); a process that
/// never calls it (a test) gets the buckets of the default settings.
pub fn configure_metrics(settings: &Settings) {
    let mut buckets = histogram_buckets(&settings.intake, &settings.stripe, &settings.worker);
    // A push delivered by the last retry of its schedule: the schedule's whole length and the
    // attempts' timeouts, plus the 20 % of jitter.
    let push = &settings.push;
    let attempts = push.retry_schedule_secs.len() as f64 + 1.0;
    let longest = 1.2 * push.retry_schedule_secs.iter().sum::<f64>() + attempts * push.timeout_secs;
    buckets.push((push::DELIVERY_SECONDS, ladder_to(longest)));
    let _ = BUCKETS.set(buckets);
}

/// The process-wide Prometheus recorder. Installed on first use: several apps in one process
/// (tests, `autorenew run`) share it, as they share the process.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = BUCKETS.get_or_init(|| {
                histogram_buckets(
                    &IntakeSettings::default(),
                    &StripeSettings::default(),
                    &WorkerSettings::default(),
                )
            });
            let recorder = buckets
                .iter()
                .fold(
                    PrometheusBuilder::new()
                        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LADDER),
                    |builder, (name, values)| {
                        builder.and_then(|builder| {
                            builder.set_buckets_for_metric(Matcher::Full((*name).into()), values)
                        })
                    },
                )
                .map(|builder| builder.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); ours still renders
            // whatever is recorded through it.
            let _ = metrics::set_global_recorder(recorder);
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Counts a job in hand for as long as it lives: dropped when the job's task ends, however it
/// ends (settled, panicked, or aborted by a drain that ran out of time).
#[derive(Debug)]
#[must_use = "the job counts as in hand only while this is held"]
pub struct JobInHand(());

impl JobInHand {
    pub fn enter() -> Self {
        metrics::gauge!(JOBS_IN_HAND).increment(1.0);
        JobInHand(())
    }
}

impl Drop for JobInHand {
    fn drop(&mut self) {
        metrics::gauge!(JOBS_IN_HAND).decrement(1.0);
    }
}

/// The worker's connection and consumer state, as gauges (set when `/metrics` is scraped).
pub fn record_worker_state(broker_connected: bool, consuming: bool) {
    metrics::gauge!(BROKER_CONNECTED).set(f64::from(u8::from(broker_connected)));
    metrics::gauge!(CONSUMING).set(f64::from(u8::from(consuming)));
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(buckets: &[(&'static str, Vec<f64>)], name: &str) -> f64 {
        let (_, values) = buckets.iter().find(|(n, _)| *n == name).expect(name);
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{name}: {values:?}");
        *values.last().expect("a bucket")
    }

    #[test]
    fn each_histogram_reaches_the_longest_time_it_can_record() {
        let defaults = histogram_buckets(
            &IntakeSettings::default(),
            &StripeSettings::default(),
            &WorkerSettings::default(),
        );
        // 10 s for the body, twice the 1.5 s publish timeout, then the 30 s `Prefer: wait`.
        assert_eq!(
            top(&defaults, "autorenew_intake_request_duration_seconds"),
            43.0
        );
        assert_eq!(
            top(&defaults, "autorenew_intake_enqueue_duration_seconds"),
            3.0
        );
        assert_eq!(top(&defaults, "autorenew_stripe_budget_wait_seconds"), 10.0);
        // 5 calls × 5 tries × (10 s call + 5 s backoff).
        assert_eq!(
            top(&defaults, "autorenew_worker_job_duration_seconds"),
            375.0
        );

        let intake = IntakeSettings {
            max_wait_secs: 120,
            ..IntakeSettings::default()
        };
        let stripe = StripeSettings {
            request_timeout_ms: 80_000,
            ..StripeSettings::default()
        };
        let longer = histogram_buckets(&intake, &stripe, &WorkerSettings::default());
        assert!(top(&longer, "autorenew_intake_request_duration_seconds") >= 120.0);
        assert!(top(&longer, "autorenew_stripe_budget_wait_seconds") >= 80.0);
    }

    #[test]
    fn the_exposition_carries_build_info_gauges_and_long_buckets() {
        let handle = metrics_handle();
        metrics::histogram!(intake::REQUEST_SECONDS, "route" => "/test").record(29.0);
        record_worker_state(true, false);
        let in_hand = JobInHand::enter();
        let text = handle.render();
        drop(in_hand);
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!("autorenew_build_info{{version=\"{version}\"}} 1")),
            "{text}"
        );
        assert!(
            text.contains("autorenew_worker_broker_connected 1"),
            "{text}"
        );
        assert!(text.contains("autorenew_worker_consuming 0"), "{text}");
        assert!(text.contains("autorenew_worker_jobs_in_hand"), "{text}");
        assert!(
            text.contains(
                "autorenew_intake_request_duration_seconds_bucket{route=\"/test\",le=\"30\"} 1"
            ),
            "{text}"
        );
    }
}
