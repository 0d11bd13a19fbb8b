//! Pacing, the same for HTTP and the baseline: an open loop that sends on a schedule whatever
//! the answers, or a closed loop of senders that each send back-to-back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::payload::{Generator, Kind, Prepared};
use super::progress::Live;
use super::report::{Answer, Sample, SendOutcome, Verdict, verdict};

/// A send counts as late when it leaves this long after its slot: tokio's timer has 1 ms
/// granularity, so anything less is noise.
pub const LATE_AFTER: Duration = Duration::from_millis(5);

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// `rate` requests per second on a fixed schedule; at most `max_in_flight` unanswered.
    Open { rate: f64, max_in_flight: usize },
    /// `concurrency` senders, each sending its next request when the last is answered.
    Closed { concurrency: usize },
}

/// When sending stops: after `duration`, or when the generator's count is spent, whichever
/// comes first (at least one of the two is always set).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
}

/// Sends one prepared request and says how it ended. Never fails: a failure is an answer.
pub trait Send: std::marker::Send + Sync + 'static {
    fn send(&self, request: &Prepared) -> impl Future<Output = Answer> + std::marker::Send;
}

/// Sends until the limit or `shutdown`, then waits for the answers still due (each bounded by
/// the sender's own timeout).
pub async fn drive<S: Send>(
    pacing: Pacing,
    limit: Limit,
    generator: Arc<Generator>,
    sender: Arc<S>,
    live: Arc<Live>,
    shutdown: &CancellationToken,
) -> SendOutcome {
    let started = Instant::now();
    let deadline = limit.duration.map(|d| started + d);
    let mut outcome = match pacing {
        Pacing::Closed { concurrency } => {
            closed(concurrency, deadline, generator, sender, live, shutdown).await
        }
        Pacing::Open {
            rate,
            max_in_flight,
        } => {
            open(
                rate,
                max_in_flight,
                deadline,
                generator,
                sender,
                live,
                shutdown,
            )
            .await
        }
    };
    outcome.elapsed = started.elapsed();
    outcome.interrupted = shutdown.is_cancelled();
    outcome
}

async fn closed<S: Send>(
    concurrency: usize,
    deadline: Option<Instant>,
    generator: Arc<Generator>,
    sender: Arc<S>,
    live: Arc<Live>,
    shutdown: &CancellationToken,
) -> SendOutcome {
    let mut senders = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (generator, sender, live, shutdown) = (
            generator.clone(),
            sender.clone(),
            live.clone(),
            shutdown.clone(),
        );
        senders.spawn(async move {
            let mut samples = Vec::new();
            // Bounded by the generator's count or the deadline; Ctrl-C stops it between sends.
            while !shutdown.is_cancelled() && deadline.is_none_or(|d| Instant::now() < d) {
                let Some(request) = generator.next() else {
                    break;
                };
                let due = Instant::now();
                samples.push(send_one(request, due, &*sender, &generator, &live).await);
            }
            samples
        });
    }
    let mut outcome = SendOutcome::default();
    while let Some(joined) = senders.join_next().await {
        // A sender task only panics on a bug; its samples are lost, the others still count.
        if let Ok(samples) = joined {
            outcome.samples.extend(samples);
        }
    }
    outcome
}

async fn open<S: Send>(
    rate: f64,
    max_in_flight: usize,
    deadline: Option<Instant>,
    generator: Arc<Generator>,
    sender: Arc<S>,
    live: Arc<Live>,
    shutdown: &CancellationToken,
) -> SendOutcome {
    let mut outcome = SendOutcome::default();
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut in_flight = JoinSet::new();
    let started = Instant::now();
    // Slots are computed from the start, not from the previous send, so a slow moment is
    // followed by a catch-up burst (like MissedTickBehavior::Burst) and the average rate holds.
    for slot_index in 0u64.. {
        let slot = started + Duration::from_secs_f64(slot_index as f64 / rate);
        if deadline.is_some_and(|d| slot >= d) {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(slot) => {}
        }
        let Some(request) = generator.next() else {
            break;
        };
        // The cap keeps memory bounded when the target stalls; waiting for it makes the
        // following sends late, which the report shows.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let lateness = Instant::now().saturating_duration_since(slot);
        if lateness > LATE_AFTER {
            outcome.late += 1;
        }
        outcome.max_lateness = outcome.max_lateness.max(lateness);
        let (generator, sender, live) = (generator.clone(), sender.clone(), live.clone());
        in_flight.spawn(async move {
            // Latency counts from the slot, so a stalled target cannot hide its stall by
            // slowing the sender down (no coordinated omission).
            let sample = send_one(request, slot, &*sender, &generator, &live).await;
            drop(permit);
            sample
        });
        while let Some(joined) = in_flight.try_join_next() {
            if let Ok(sample) = joined {
                outcome.samples.push(sample);
            }
        }
    }
    while let Some(joined) = in_flight.join_next().await {
        if let Ok(sample) = joined {
            outcome.samples.push(sample);
        }
    }
    outcome
}

async fn send_one<S: Send>(
    request: Prepared,
    due: Instant,
    sender: &S,
    generator: &Generator,
    live: &Live,
) -> Sample {
    live.sent();
    let answer = sender.send(&request).await;
    let latency = due.elapsed();
    let accepted = answer.is_accepted();
    if let (Kind::Fresh, true, Some(index)) = (request.kind, accepted, request.fresh_index) {
        generator.accepted(index);
    }
    let judged = verdict(request.kind, &answer);
    live.answered(
        accepted,
        judged == Verdict::Shed,
        matches!(judged, Verdict::Error | Verdict::Mismatched),
    );
    Sample {
        kind: request.kind,
        pay_id: request.pay_id,
        declining: request.declining,
        sent_at: due.into_std(),
        latency,
        answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{Mix, PayloadSpec};
    use secrecy::SecretString;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Answers 200 to everything and counts what it was sent.
    #[derive(Default)]
    struct Counting(AtomicU64);

    impl Send for Counting {
        async fn send(&self, _request: &Prepared) -> Answer {
            self.0.fetch_add(1, Ordering::Relaxed);
            Answer::Http {
                status: 200,
                code: "S".into(),
            }
        }
    }

    fn generator(limit: Option<u64>) -> Arc<Generator> {
        let spec = PayloadSpec {
            partner: "P".into(),
            secret: SecretString::from("s"),
            pm_id: "pm_card_visa".into(),
            plan_id: "PLAN".into(),
            amount: "1.00".into(),
            currency: "usd".into(),
            email: None,
            customers: None,
        };
        Arc::new(Generator::new(spec, "t", Mix::default(), limit))
    }

    #[tokio::test]
    async fn a_closed_loop_sends_exactly_the_count() {
        let sender = Arc::new(Counting::default());
        let limit = Limit {
            requests: Some(250),
            duration: None,
        };
        let outcome = drive(
            Pacing::Closed { concurrency: 8 },
            limit,
            generator(Some(250)),
            sender.clone(),
            Arc::default(),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(outcome.samples.len(), 250);
        assert_eq!(sender.0.load(Ordering::Relaxed), 250);
        assert!(!outcome.interrupted);
    }

    #[tokio::test]
    async fn an_open_loop_sends_exactly_the_count() {
        let sender = Arc::new(Counting::default());
        let limit = Limit {
            requests: Some(50),
            duration: None,
        };
        let pacing = Pacing::Open {
            rate: 2000.0,
            max_in_flight: 4,
        };
        let outcome = drive(
            pacing,
            limit,
            generator(Some(50)),
            sender.clone(),
            Arc::default(),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(outcome.samples.len(), 50);
        assert_eq!(sender.0.load(Ordering::Relaxed), 50);
    }

    #[tokio::test]
    async fn a_cancelled_run_stops_sending() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let outcome = drive(
            Pacing::Closed { concurrency: 4 },
            Limit {
                requests: Some(1000),
                duration: None,
            },
            generator(Some(1000)),
            Arc::new(Counting::default()),
            Arc::default(),
            &shutdown,
        )
        .await;
        assert!(outcome.samples.is_empty());
        assert!(outcome.interrupted);
    }
}
