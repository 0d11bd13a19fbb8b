//! A partner's lane: its own channel and consumer on its own queue, its prefetch and semaphore
//! sized by its `max_in_flight`, and its own pause. A partner whose endpoint hangs fills only
//! its lane; the other lanes never wait on it.
//!
//! The lane reads the partner's state in Redis (shared by every notifier) before it consumes
//! and every [`POLL`] while it does: disabled, or a breaker open, stops its consumer; once the
//! cool-down has passed, one notifier takes the probe lock and consumes one message; a 2xx
//! closes the breaker and the lane flows again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Notifier;
use super::acks::Acks;
use crate::domain::clock::now_millis;
use crate::domain::push::PushSecret;
use crate::telemetry::names::push::{BREAKER_STATE, DISABLED, FAILED, PENDING};

/// How often a lane reads its partner's state.
pub const POLL: Duration = Duration::from_millis(250);

/// One pushing partner, as its lane sees it.
pub struct Lane {
    pub partner: String,
    pub url: String,
    pub secrets: Vec<PushSecret>,
    pub max_in_flight: u16,
    /// Set while the partner's deliveries must stop: a delivery in hand is handed back
    /// without an attempt.
    pub paused: AtomicBool,
    /// Woken when a delivery paused the lane, so its consumer stops at once.
    wake: Notify,
    /// True while a consumer is registered on the partner's queue.
    pub consuming: AtomicBool,
}

impl Lane {
    pub fn new(partner: &str, url: &str, secrets: Vec<PushSecret>, max_in_flight: u16) -> Self {
        Lane {
            partner: partner.to_owned(),
            url: url.to_owned(),
            secrets,
            max_in_flight,
            paused: AtomicBool::new(false),
            wake: Notify::new(),
            consuming: AtomicBool::new(false),
        }
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

/// What the partner's state allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Flow,
    /// One message, after a breaker's cool-down.
    Probe,
    Wait(Duration),
}

impl Notifier {
    pub(super) async fn run_lane(self: Arc<Self>, lane: Arc<Lane>, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        while !shutdown.is_cancelled() {
            let mode = if self.broker.is_ready() {
                self.mode(&lane).await
            } else {
                Mode::Wait(POLL)
            };
            match mode {
                Mode::Wait(pause) => {
                    lane.paused.store(true, Ordering::SeqCst);
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                Mode::Flow | Mode::Probe => {
                    lane.paused.store(false, Ordering::SeqCst);
                    let probe = mode == Mode::Probe;
                    if let Err(error) = self.consume(&lane, probe, &shutdown, &mut tasks).await {
                        tracing::warn!(partner = %lane.partner, %error, "push consumer stopped; resuming");
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = tokio::time::sleep(POLL) => {}
                        }
                    }
                }
            }
            while tasks.try_join_next().is_some() {}
        }
        // The attempts in hand end within the push timeout; past that, what is unacked returns
        // to the queue when the connection closes.
        let limit = self.settings.timeout() + PUBLISH_GRACE;
        if tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tasks.abort_all();
        }
    }

    /// Reads the partner's state, updates its gauges, and says what the lane may do.
    async fn mode(&self, lane: &Lane) -> Mode {
        let partner = lane.partner.as_str();
        let state = match self.store.push_state(partner).await {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(partner, %error, "cannot read the push state; waiting");
                return Mode::Wait(POLL);
            }
        };
        if let Ok(counts) = self.store.push_counts(partner).await {
            metrics::gauge!(PENDING, "partner" => lane.partner.clone()).set(counts.pending as f64);
            metrics::gauge!(FAILED, "partner" => lane.partner.clone()).set(counts.failed as f64);
        }
        metrics::gauge!(DISABLED, "partner" => lane.partner.clone()).set(if state.disabled {
            1.0
        } else {
            0.0
        });
        let now = i64::try_from(now_millis()).unwrap_or(i64::MAX);
        let (mode, breaker) = if state.disabled {
            (Mode::Wait(POLL), 1.0)
        } else if state.open_until_ms == 0 {
            (Mode::Flow, 0.0)
        } else if state.open_until_ms > now {
            let left = Duration::from_millis(u64::try_from(state.open_until_ms - now).unwrap_or(0));
            (Mode::Wait(left.min(POLL)), 1.0)
        } else {
            let lock = self.settings.timeout() + PUBLISH_GRACE;
            match self.store.push_try_probe(partner, lock).await {
                Ok(true) => (Mode::Probe, 2.0),
                _ => (Mode::Wait(POLL), 2.0),
            }
        };
        // 0 closed, 1 open, 2 half-open (a probe may go).
        metrics::gauge!(BREAKER_STATE, "partner" => lane.partner.clone()).set(breaker);
        mode
    }

    /// Consumes the partner's queue until its mode changes, the channel fails or shutdown; a
    /// probe takes one message and waits for its outcome.
    async fn consume(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        probe: bool,
        shutdown: &CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), lapin::Error> {
        let Ok(channel) = self.broker.open_channel().await else {
            return Ok(());
        };
        let prefetch = if probe { 1 } else { lane.max_in_flight };
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!(
            "autorenew-notifier-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let mut consumer = channel
            .basic_consume(
                self.broker.topology().push_queue(&lane.partner).into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        lane.consuming.store(true, Ordering::SeqCst);
        // The acks task holds the channel until the last delivery taken on it is acked or
        // nacked: its ack must go out on it. It runs among the lane's tasks, so a drain waits
        // for it.
        let (acks, sending) = Acks::new(channel.clone(), lane.partner.clone());
        tasks.spawn(sending);
        let slots = Arc::new(Semaphore::new(usize::from(prefetch)));
        let mut poll = tokio::time::interval(POLL);
        poll.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = lane.wake.notified() => {
                    if lane.paused.load(Ordering::SeqCst) {
                        break;
                    }
                }
                _ = poll.tick() => {
                    let go_on = if probe {
                        // Waiting for a message to probe with: only a disable stops that.
                        self.store
                            .push_state(&lane.partner)
                            .await
                            .is_ok_and(|state| !state.disabled)
                    } else {
                        self.mode(lane).await == Mode::Flow
                    };
                    if !go_on {
                        lane.paused.store(true, Ordering::SeqCst);
                        break;
                    }
                }
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        acks.taken(delivery.delivery_tag);
                        while tasks.try_join_next().is_some() {}
                        let Ok(permit) = slots.clone().acquire_owned().await else { break };
                        let notifier = self.clone();
                        let lane = lane.clone();
                        let acks = acks.clone();
                        tasks.spawn(async move {
                            notifier.handle(lane, delivery, acks).await;
                            drop(permit);
                        });
                        if probe {
                            break;
                        }
                    }
                    Some(Err(error)) => {
                        lane.consuming.store(false, Ordering::SeqCst);
                        return Err(error);
                    }
                    None => break,
                },
            }
        }
        lane.consuming.store(false, Ordering::SeqCst);
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        // The acks task ends once the deliveries in hand have ended.
        drop(acks);
        if probe {
            // The probe's outcome decides the next mode.
            while tasks.join_next().await.is_some() {}
        }
        Ok(())
    }
}

/// Time beyond the push timeout for an attempt's log and retry to be written.
const PUBLISH_GRACE: Duration = Duration::from_secs(5);
