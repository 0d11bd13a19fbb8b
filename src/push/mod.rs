//! The partner push (docs/partners.md#the-push-signed-notifications-to-your-url): `autorenew notifier` delivers every result event of a
//! partner with a push to its URL, signed (Standard Webhooks), at least once, each partner in
//! a lane of its own; `autorenew push` and `autorenew receiver` are its tools. Uses the domain,
//! the broker and the store; never the intake or Stripe. The design: docs/design.md.

mod acks;
mod client;
mod deliver;
mod health;
mod lane;
pub mod ops;
pub mod ports;
pub mod receiver;
mod retry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use client::{Attempted, PushClient, USER_AGENT_VALUE, check_host};
pub use deliver::{Deliverer, DeliveryEnd};
pub use lane::Lane;

use crate::broker::{Broker, Topology};
use crate::config::{PushSettings, Settings};
use crate::store::Store;

/// How long the broker connection may take to close after the drain.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every lane of a notifier shares.
pub struct Notifier {
    pub broker: Broker,
    pub store: Store,
    pub client: PushClient,
    pub settings: PushSettings,
    /// Each delivery's code, on the store, the client and the broker.
    pub deliverer: Deliverer,
    pub lanes: Vec<Arc<Lane>>,
}

impl Notifier {
    /// A notifier over `broker` and `store` for the pushing partners of `settings`.
    pub fn new(settings: &Settings, broker: Broker, store: Store) -> anyhow::Result<Self> {
        let lanes = settings
            .partners
            .iter()
            .filter_map(|partner| {
                let push = partner.push.as_ref()?;
                Some(Arc::new(Lane::new(
                    &partner.code,
                    &push.url,
                    push.keys(),
                    push.max_in_flight,
                )))
            })
            .collect();
        let client = PushClient::new(&settings.push)?;
        let push = &settings.push;
        let deliverer = Deliverer {
            log: Arc::new(store.clone()),
            sender: Arc::new(client.clone()),
            retries: Arc::new(broker.clone()),
            clock: Arc::new(ports::SystemClock),
            schedule: push.retry_schedule(),
            retention: Duration::from_secs(u64::from(push.log_retention_days) * 86_400),
            breaker: ports::BreakerRule {
                failures: push.breaker_failures,
                cooldown: Duration::from_secs_f64(push.breaker_cooldown_secs),
                longest_cooldown: Duration::from_secs_f64(push.breaker_cooldown_max_secs),
                disable_after: Duration::from_secs_f64(push.disable_after_hours * 3600.0),
            },
            jitter: std::sync::Mutex::new(fastrand::Rng::new()),
        };
        Ok(Notifier {
            broker,
            store,
            client,
            settings: settings.push.clone(),
            deliverer,
            lanes,
        })
    }

    pub fn lane(&self, partner: &str) -> Option<&Arc<Lane>> {
        self.lanes.iter().find(|lane| lane.partner == partner)
    }
}

/// Refuses a push URL whose host resolves to an address a push may not reach (docs/operations.md#the-partner-push:
/// at start-up as at each attempt). A name that does not resolve now only warns: the
/// attempts will tell.
pub async fn check_destinations(settings: &Settings) -> anyhow::Result<()> {
    for (index, partner) in settings.partners.iter().enumerate() {
        let Some(push) = &partner.push else { continue };
        let Some(host) = url::Url::parse(&push.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
        else {
            continue;
        };
        match check_host(&host, settings.push.allow_private_networks).await {
            Ok(()) => {}
            Err(reason) if reason.contains("does not resolve") => {
                tracing::warn!(partner = %partner.code, %reason, "push URL does not resolve now");
            }
            Err(reason) => anyhow::bail!(
                "configuration key `partners[{index}].push.url`: {reason} (set \
                 push.allow_private_networks = true for a laptop)"
            ),
        }
    }
    Ok(())
}

/// A notifier process: its lanes and its probe server, bound and ready to run.
pub struct Application {
    notifier: Arc<Notifier>,
    listener: TcpListener,
    /// Stops the broker connection, after the drain. Also stops it if never run.
    broker_stop: DropGuard,
}

impl Application {
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        crate::telemetry::metrics_handle();
        check_destinations(settings).await?;
        let broker_stop = CancellationToken::new();
        let broker = Broker::start(
            settings.amqp.url.clone(),
            Topology::from_settings(settings),
            broker_stop.clone(),
        );
        let store = Store::new(&settings.redis)?;
        let notifier = Arc::new(Notifier::new(settings, broker, store)?);
        let listener = TcpListener::bind(settings.push.listen_addr())
            .await
            .with_context(|| format!("push.listen {}", settings.push.listen))?;
        Ok(Application {
            notifier,
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

    /// Runs every lane until `shutdown`; then lets the attempts in hand end, closes the broker
    /// connection and stops the probes.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let probes_stop = CancellationToken::new();
        let probes = axum::serve(self.listener, health::router(self.notifier.clone()))
            .with_graceful_shutdown(probes_stop.clone().cancelled_owned());
        let probes = tokio::spawn(async move { probes.await });
        let mut lanes = tokio::task::JoinSet::new();
        for lane in &self.notifier.lanes {
            lanes.spawn(
                self.notifier
                    .clone()
                    .run_lane(lane.clone(), shutdown.clone()),
            );
        }
        if lanes.is_empty() {
            shutdown.cancelled().await;
        }
        while lanes.join_next().await.is_some() {}
        drop(self.broker_stop);
        if tokio::time::timeout(CLOSE_TIMEOUT, self.notifier.broker.stopped())
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

/// `autorenew notifier`: push until a signal, then drain and exit.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = Application::build(&settings).await?;
    let partners: Vec<&str> = app
        .notifier
        .lanes
        .iter()
        .map(|lane| lane.partner.as_str())
        .collect();
    tracing::info!(probes = %app.local_addr(), ?partners, "notifier starting");
    println!(
        "autorenew notifier: pushing for {} partner(s); probes and metrics on http://{}",
        partners.len(),
        app.local_addr()
    );
    app.run_until_stopped(shutdown).await
}
