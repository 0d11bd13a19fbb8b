//! The worker: jobs become Stripe subscriptions and result events (docs/partners.md#events-and-the-broker). Uses the
//! domain, the broker, the store and the Stripe gateway; never the intake.

mod adapters;
mod cancel;
mod consumer;
mod creation;
mod health;
#[cfg(test)]
mod job_path_tests;
/// The in-memory twins of the ports, for tests and the simulation only: not in the binary.
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod message;
// The job path's ports sit below the worker, where `rebuild` (used by the intake too) reaches
// them; the worker's code names them as its own.
pub use crate::ports;
mod steps;
mod stripe_event;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use adapters::{BrokerQueue, SystemClock};
pub use consumer::{Worker, lane_prefetch, run_job};
pub use creation::{JobContext, JobPorts};
pub use steps::{JobSettings, RetryPolicy};

use crate::broker::{Broker, JOB_DELIVERY_LIMIT, Topology};
use crate::budget::SharedBudget;
use crate::config::Settings;
use crate::store::Store;
use crate::stripe::{ClientOptions, Gateway};

/// How long a confirm of the worker's own publishes may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the job path takes from the configuration; `stop` (the drain running out of time) cuts
/// the pauses between retries.
pub fn job_settings(settings: &Settings, stop: CancellationToken) -> JobSettings {
    let worker = &settings.worker;
    JobSettings {
        plans: settings.plans.clone(),
        payment_behavior: settings.stripe.payment_behavior.clone(),
        retry: RetryPolicy {
            step_retries: worker.step_retries,
            min_delay: Duration::from_millis(worker.retry_min_delay_ms),
            max_delay: Duration::from_millis(worker.retry_max_delay_ms),
            jitter: true,
            stop,
        },
        lock_ttl: Duration::from_millis(worker.lock_ttl_ms),
        give_up_after: worker.give_up_after.0,
        delivery_limit: JOB_DELIVERY_LIMIT,
        prices: Mutex::new(HashMap::new()),
    }
}

/// How long the broker connection may take to close after the drain.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A worker process: the consumer and its probe server, bound and ready to run.
pub struct Application {
    worker: Arc<Worker>,
    listener: TcpListener,
    /// Stops the broker connection. Not the shutdown token: the connection must outlive the
    /// drain, so the jobs in hand can publish and ack. Also stops it if never run.
    broker_stop: DropGuard,
}

impl Application {
    /// Connects (in the background) and binds the probe address. `settings.stripe` must name a
    /// key, and an API base unless it is Stripe's own.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        // The recorder must exist before the first job counts anything, not at the first scrape.
        crate::telemetry::metrics_handle();
        let broker_stop = CancellationToken::new();
        let broker = Broker::start(
            settings.amqp.url.clone(),
            Topology::from_settings(settings),
            broker_stop.clone(),
        );
        let store = Store::new(&settings.redis)?;
        let give_up = CancellationToken::new();
        let budget = Arc::new(SharedBudget::new(settings, store.clone(), give_up.clone()));
        let options = ClientOptions {
            secret_key: &settings.stripe.secret_key,
            api_base: &settings.stripe.api_base,
            timeout: Duration::from_millis(settings.stripe.request_timeout_ms),
            http2_prior_knowledge: settings.stripe.http2_prior_knowledge,
        };
        let gateway = Gateway::new(&options, budget).map_err(|e| anyhow::anyhow!("{e}"))?;
        let queue = BrokerQueue {
            broker: broker.clone(),
            timeout: PUBLISH_TIMEOUT,
        };
        let ports = JobPorts {
            queue: Arc::new(queue),
            store: Arc::new(store.clone()),
            stripe: Arc::new(gateway),
            clock: Arc::new(SystemClock),
        };
        let ctx = JobContext {
            ports,
            settings: job_settings(settings, give_up.clone()),
        };
        let worker = Arc::new(Worker {
            broker,
            store,
            ctx: Arc::new(ctx),
            concurrency: settings.worker.concurrency,
            drain_timeout: Duration::from_secs(settings.worker.drain_timeout_secs),
            give_up,
            consuming: AtomicBool::new(false),
            store_trouble: AtomicBool::new(false),
        });
        let address = settings.worker_listen();
        let listener = TcpListener::bind(address).await.map_err(|error| {
            crate::accept::bind_failed(
                &error,
                address,
                "worker.listen",
                "e.g. AUTORENEW__WORKER__LISTEN=127.0.0.1:0 (any free port; the worker prints \
                 the one it got) or another port",
            )
        })?;
        Ok(Application {
            worker,
            listener,
            broker_stop: broker_stop.drop_guard(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Consumes until `shutdown`; then stops the deliveries (`/readyz` answers 503 from then
    /// on), lets the jobs in hand finish, closes the broker connection and stops the probes.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let probes_stop = CancellationToken::new();
        let probes = axum::serve(self.listener, health::router(self.worker.clone()))
            .with_graceful_shutdown(probes_stop.clone().cancelled_owned());
        let probes = tokio::spawn(async move { probes.await });
        self.worker.clone().run(shutdown).await;
        // Only now: the jobs in hand have published and acked over this connection.
        drop(self.broker_stop);
        if tokio::time::timeout(CLOSE_TIMEOUT, self.worker.broker.stopped())
            .await
            .is_err()
        {
            tracing::warn!("the broker connection did not close in time");
        }
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
    let app = Application::build(&settings).await?;
    tracing::info!(probes = %app.local_addr(), "worker starting");
    println!(
        "autorenew worker: probes and metrics on http://{}",
        app.local_addr()
    );
    app.run_until_stopped(shutdown).await
}
