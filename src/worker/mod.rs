//! The worker: jobs become Stripe subscriptions and result events (CONTRACT §5, §6). Uses the
//! domain, the broker, the store and the Stripe gateway; never the intake.

mod adapters;
mod budget;
mod consumer;
mod health;
pub mod job;
#[cfg(test)]
mod job_path_tests;
pub mod memory;
pub mod ports;
mod steps;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use adapters::{BrokerQueue, SystemClock};
pub use consumer::{Worker, run_job};
pub use job::{Handled, JobContext, JobPorts};
pub use steps::{JobSettings, RetryPolicy};

use crate::broker::{Broker, JOB_DELIVERY_LIMIT, Topology};
use crate::config::Settings;
use crate::store::Store;
use crate::stripe::{ClientOptions, Gateway};

/// How long a confirm of the worker's own publishes may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the job path takes from the configuration.
pub fn job_settings(settings: &Settings) -> JobSettings {
    let worker = &settings.worker;
    JobSettings {
        plans: settings.plans.clone(),
        payment_behavior: settings.stripe.payment_behavior.clone(),
        retry: RetryPolicy {
            step_retries: worker.step_retries,
            min_delay: Duration::from_millis(worker.retry_min_delay_ms),
            max_delay: Duration::from_millis(worker.retry_max_delay_ms),
            jitter: true,
        },
        lock_ttl: Duration::from_millis(worker.lock_ttl_ms),
        key_switch_after: Duration::from_millis(worker.key_switch_after_ms),
        delivery_limit: JOB_DELIVERY_LIMIT,
        prices: Mutex::new(HashMap::new()),
    }
}

/// A worker process: the consumer and its probe server, bound and ready to run.
pub struct Application {
    worker: Arc<Worker>,
    listener: TcpListener,
}

impl Application {
    /// Connects (in the background) and binds the probe address. `settings.stripe` must name a
    /// key, and an API base unless it is Stripe's own.
    pub async fn build(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        // The recorder must exist before the first job counts anything, not at the first scrape.
        crate::telemetry::metrics_handle();
        let broker = Broker::start(
            settings.amqp.url.clone(),
            Topology::from_settings(settings),
            shutdown,
        );
        let store = Store::new(&settings.redis)?;
        let budget = Arc::new(budget::RedisBudget {
            store: store.clone(),
            per_second: settings.stripe.max_requests_per_second,
        });
        let options = ClientOptions {
            secret_key: &settings.stripe.secret_key,
            api_base: &settings.stripe.api_base,
            timeout: Duration::from_millis(settings.stripe.request_timeout_ms),
            http2_prior_knowledge: settings.stripe.http2_prior_knowledge,
        };
        let gateway = Gateway::new(&options, budget).map_err(|e| anyhow::anyhow!("{e}"))?;
        let ports = JobPorts {
            queue: Arc::new(BrokerQueue {
                broker: broker.clone(),
                timeout: PUBLISH_TIMEOUT,
            }),
            store: Arc::new(store.clone()),
            stripe: Arc::new(gateway),
            clock: Arc::new(SystemClock),
        };
        let ctx = JobContext {
            ports,
            settings: job_settings(settings),
        };
        let worker = Arc::new(Worker {
            broker,
            store,
            ctx: Arc::new(ctx),
            concurrency: settings.worker.concurrency,
            drain_timeout: Duration::from_secs(settings.worker.drain_timeout_secs),
            consuming: AtomicBool::new(false),
            store_trouble: AtomicBool::new(false),
        });
        let listener = TcpListener::bind(settings.worker_listen()).await?;
        Ok(Application { worker, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Consumes until `shutdown`, then drains the jobs in hand and stops the probes.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let probes_stop = CancellationToken::new();
        let probes = axum::serve(self.listener, health::router(self.worker.clone()))
            .with_graceful_shutdown(probes_stop.clone().cancelled_owned());
        let probes = tokio::spawn(async move { probes.await });
        self.worker.clone().run(shutdown).await;
        probes_stop.cancel();
        let _ = probes.await;
        Ok(())
    }
}

/// `autorenew worker`: work until a signal, then drain and exit.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    if secrecy::ExposeSecret::expose_secret(&settings.stripe.secret_key).is_empty() {
        anyhow::bail!(
            "configuration key `stripe.secret_key` is empty: `autorenew worker` needs a Stripe key \
             (use `autorenew run` for the built-in simulator)"
        );
    }
    let app = Application::build(&settings, shutdown.clone()).await?;
    tracing::info!(probes = %app.local_addr(), "worker starting");
    println!(
        "autorenew worker: probes and metrics on http://{}",
        app.local_addr()
    );
    app.run_until_stopped(shutdown).await
}
