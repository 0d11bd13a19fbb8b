//! A RabbitMQ connection kept alive in the background: connect, declare the topology, open a
//! confirming publisher channel, watch it, and start again when it breaks.
//!
//! Callers never wait for a connection: while there is none, [`Broker::publish`] fails at once
//! with [`BrokerError::Unavailable`], so the intake can answer 503 instead of hanging.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use super::BrokerError;
use super::topology::Topology;

/// How long one connection attempt (TCP, AMQP handshake, topology) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts, doubled up to the maximum while the broker stays away.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How often a live connection is checked, besides lapin's own error events.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// The least time between two renewals of the publisher channel after nacks.
const RENEW_AT_MOST_EVERY: Duration = Duration::from_millis(250);
/// How long a replaced publisher channel stays open for the confirms still due on it.
const RETIRED_CHANNEL_GRACE: Duration = Duration::from_secs(10);

/// A handle on the broker, cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    topology: Topology,
    live: RwLock<Option<Live>>,
    /// Woken whenever a connection comes up, for callers that want to wait for one.
    connected: tokio::sync::Notify,
    /// Which node of a multi-node URL to try first next time.
    next_node: AtomicUsize,
    /// Cancelled once the supervisor has ended and closed its connection.
    stopped: CancellationToken,
    /// Told of every nack. A quorum queue with `reject-publish` (ours: at-least-once dead
    /// lettering needs it) can leave a channel that was opened while the queue's leader was
    /// being elected nacking every publish until the old leader's node returns (seen on a
    /// three-node cluster: 10 s of 503s after a kill -9). A new channel finds the new leader.
    nacked: tokio::sync::Notify,
}

#[derive(Clone)]
struct Live {
    connection: Arc<Connection>,
    publisher: Channel,
}

impl Live {
    fn is_healthy(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("prefix", &self.inner.topology.jobs())
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Broker {
    /// Starts the connection loop; returns at once. The loop ends with `shutdown`, closing the
    /// connection. A server gives it a token of its own, cancelled only after its work in hand
    /// is done: a job being drained must still publish and ack over this connection.
    pub fn start(url: SecretString, topology: Topology, shutdown: CancellationToken) -> Self {
        let broker = Broker {
            inner: Arc::new(Inner {
                topology,
                live: RwLock::new(None),
                connected: tokio::sync::Notify::new(),
                next_node: AtomicUsize::new(0),
                stopped: CancellationToken::new(),
                nacked: tokio::sync::Notify::new(),
            }),
        };
        tokio::spawn(broker.clone().supervise(url, shutdown));
        broker
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Returns once the loop has ended after its `shutdown`, with the connection closed: what
    /// was sent on it (acks, publishes) reached RabbitMQ before the close.
    pub async fn stopped(&self) {
        self.inner.stopped.cancelled().await;
    }

    /// Whether a connection with a working publisher channel is up right now.
    pub fn is_ready(&self) -> bool {
        self.live().is_some_and(|live| live.is_healthy())
    }

    /// Waits up to `timeout` for a connection; true when there is one.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.connected.notified();
            if self.is_ready() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_ready();
            }
        }
    }

    /// The publisher channel, if connected.
    pub(super) fn publisher(&self) -> Result<Channel, BrokerError> {
        match self.live() {
            Some(live) if live.is_healthy() => Ok(live.publisher),
            _ => Err(BrokerError::Unavailable),
        }
    }

    /// A new channel on the live connection (consumers open their own).
    pub async fn open_channel(&self) -> Result<Channel, BrokerError> {
        let live = self.live().ok_or(BrokerError::Unavailable)?;
        live.connection
            .create_channel()
            .await
            .map_err(BrokerError::Amqp)
    }

    /// Says a publish was nacked: the supervisor renews the publisher channel.
    pub(super) fn report_nack(&self) {
        self.inner.nacked.notify_one();
    }

    fn live(&self) -> Option<Live> {
        // A poisoned lock only means a panic elsewhere while holding it; the value is still a
        // plain Option and safe to read.
        match self.inner.live.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_live(&self, live: Option<Live>) {
        match self.inner.live.write() {
            Ok(mut guard) => *guard = live,
            Err(poisoned) => *poisoned.into_inner() = live,
        }
    }

    async fn supervise(self, url: SecretString, shutdown: CancellationToken) {
        let mut pause = RECONNECT_MIN;
        loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => break,
                outcome = self.connect(&url) => outcome,
            };
            match outcome {
                Ok(live) => {
                    tracing::info!("connected to RabbitMQ");
                    pause = RECONNECT_MIN;
                    self.set_live(Some(live.clone()));
                    self.inner.connected.notify_waiters();
                    let live = self.watch(live, &shutdown).await;
                    self.set_live(None);
                    if shutdown.is_cancelled() {
                        // The channel first: closing it after the connection is logged as an
                        // error by lapin.
                        let _ = live.publisher.close(200, "shutting down".into()).await;
                        let _ = live.connection.close(200, "shutting down".into()).await;
                        break;
                    }
                    tracing::warn!("lost the RabbitMQ connection; reconnecting");
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot connect to RabbitMQ; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(RECONNECT_MAX);
        }
        self.set_live(None);
        self.inner.stopped.cancel();
    }

    /// Connects to the first node of `amqp.url` that answers: the URL may name a cluster's
    /// nodes, comma-separated, and after a node is lost the next attempt starts with the others.
    async fn connect(&self, url: &SecretString) -> Result<Live, String> {
        let nodes: Vec<&str> = url
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .collect();
        let first = self.inner.next_node.fetch_add(1, Ordering::Relaxed);
        let mut failures = Vec::new();
        for offset in 0..nodes.len() {
            let index = (first + offset) % nodes.len();
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_node(nodes[index])).await {
                Ok(Ok(live)) => return Ok(live),
                // Node numbers, not URLs: a URL may hold a password.
                Ok(Err(error)) => failures.push(format!("node {}: {error}", index + 1)),
                Err(_) => failures.push(format!("node {}: timed out", index + 1)),
            }
        }
        Err(failures.join("; "))
    }

    async fn connect_node(&self, uri: &str) -> lapin::Result<Live> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("autorenew-{}", std::process::id()).into());
        let connection = Connection::connect(uri, properties).await?;
        let setup = connection.create_channel().await?;
        self.inner.topology.declare(&setup).await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Live {
            connection: Arc::new(connection),
            publisher,
        })
    }

    /// Returns when the connection or its publisher channel breaks, or on shutdown, with the
    /// publisher channel in use at that time.
    async fn watch(&self, mut live: Live, shutdown: &CancellationToken) -> Live {
        let mut events = live.connection.events_listener();
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        let mut renewed_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return live,
                event = events.next() => match event {
                    Some(lapin::Event::Error(error)) => {
                        tracing::warn!(%error, "RabbitMQ connection error");
                        return live;
                    }
                    Some(_) => {}
                    None => return live,
                },
                () = self.inner.nacked.notified() => {
                    if renewed_at.is_some_and(|at| at.elapsed() < RENEW_AT_MOST_EVERY) {
                        continue;
                    }
                    renewed_at = Some(tokio::time::Instant::now());
                    match self.renew_publisher(&live).await {
                        Ok(renewed) => live = renewed,
                        Err(error) => {
                            tracing::warn!(%error, "cannot renew the publisher channel");
                            return live;
                        }
                    }
                }
                _ = tick.tick() => {
                    if !live.is_healthy() {
                        return live;
                    }
                }
            }
        }
    }

    /// Opens a new confirming publisher channel on the live connection and puts it in use.
    /// The old one stays open a while for the confirms still due on it.
    async fn renew_publisher(&self, live: &Live) -> lapin::Result<Live> {
        let publisher = live.connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let renewed = Live {
            connection: live.connection.clone(),
            publisher,
        };
        self.set_live(Some(renewed.clone()));
        tracing::info!("publisher channel renewed after a nack");
        let retired = live.publisher.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETIRED_CHANNEL_GRACE).await;
            let _ = retired.close(200, "renewed".into()).await;
        });
        Ok(renewed)
    }
}
