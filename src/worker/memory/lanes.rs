//! The queues the workers consume, as RabbitMQ holds them (src/broker/topology.rs): a lane per
//! partner the workers know, the shared jobs queue for every other message (a Stripe event, a
//! partner not configured yet), and the expired-jobs queue. Each is FIFO. Every worker consumes
//! every one of them as a consumer of its own with its own prefetch (`lane_prefetch` of its
//! slots): the broker pushes a lane's head to a consumer of that lane as long as it holds fewer
//! unacked messages of that lane than its prefetch, whatever the worker is doing. The worker
//! takes the pushed deliveries in the order they reached it.
//!
//! Which lane's push goes first when several lanes have a message and a consumer with room, and
//! which consumer gets it, is not FIFO in RabbitMQ (every queue pushes on its own): it is drawn
//! from a seed, in one of two ways per world, uniformly at random at each push, or by a fixed
//! seeded ranking of the lanes (of the lanes that can push, the same one always first).
//!
//! Every change is logged ([`LaneEvent`]) for the simulation's check that no job waits behind
//! another lane (tests/simulate/checks.rs).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tokio::time::Instant;

use super::queue::QueuedJob;

/// One of the queues the workers consume.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lane {
    /// The expired-jobs queue (past the delivery limit).
    Expired,
    /// The shared jobs queue.
    Shared,
    /// A partner's lane, `<prefix>.jobs.partner.<code>`.
    Partner(String),
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lane::Expired => f.write_str("expired"),
            Lane::Shared => f.write_str("shared"),
            Lane::Partner(code) => write!(f, "partner.{code}"),
        }
    }
}

/// What happened to the lanes, with when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneEvent {
    pub at: Instant,
    pub what: LaneChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneChange {
    /// A message entered a queue, ready (published, handed back, back from a delay); `seq`
    /// names this stay on the queue, `expired` that it is in the expired-jobs queue.
    Ready {
        seq: u64,
        message_id: String,
        partner: Option<String>,
        expired: bool,
    },
    /// The broker pushed it to a consumer: unacked from now on.
    Delivered {
        seq: u64,
        tag: u64,
        consumer: String,
    },
    /// The worker gave it one of its slots.
    Started { tag: u64 },
    /// Acked, handed back, or returned with its consumer's connection: no longer unacked.
    Ended { tag: u64 },
    /// A worker incarnation consumes every lane, `slots` jobs at once, `prefetch` unacked a lane.
    ConsumerUp {
        consumer: String,
        slots: u32,
        prefetch: u32,
    },
    /// A worker incarnation died (its unacked deliveries are back, each `Ended`).
    ConsumerDown { consumer: String },
    /// The broker went away (every delivery back, each `Ended`) or came back.
    Broker { up: bool },
}

/// An unacked delivery.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub consumer: String,
    pub lane: Lane,
    pub job: QueuedJob,
}

#[derive(Debug)]
struct Consumer {
    prefetch: u32,
    /// Pushed, not yet taken by the worker's loop, in the order they came.
    pushed: VecDeque<u64>,
}

/// How the broker orders its pushes.
#[derive(Debug)]
enum Interleave {
    Random(fastrand::Rng),
    Ranked(fastrand::Rng, BTreeMap<Lane, u64>),
}

#[derive(Debug)]
pub(super) struct Lanes {
    /// The partners that have a lane.
    partners: BTreeSet<String>,
    ready: BTreeMap<Lane, VecDeque<(u64, QueuedJob)>>,
    consumers: BTreeMap<String, Consumer>,
    pub unacked: BTreeMap<u64, Held>,
    interleave: Interleave,
    next_tag: u64,
    next_seq: u64,
    log: Vec<LaneEvent>,
}

impl Default for Lanes {
    fn default() -> Self {
        Lanes {
            partners: BTreeSet::new(),
            ready: BTreeMap::new(),
            consumers: BTreeMap::new(),
            unacked: BTreeMap::new(),
            interleave: Interleave::Random(fastrand::Rng::with_seed(0)),
            next_tag: 0,
            next_seq: 0,
            log: Vec::new(),
        }
    }
}

impl Lanes {
    pub fn set_partners(&mut self, partners: &[String]) {
        self.partners = partners.iter().cloned().collect();
    }

    pub fn set_interleave(&mut self, seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        self.interleave = if rng.bool() {
            Interleave::Random(rng)
        } else {
            Interleave::Ranked(rng, BTreeMap::new())
        };
    }

    /// The topology's routing: a partner's lane if the workers know the partner, else the
    /// shared queue.
    pub fn route(&self, job: &QueuedJob) -> Lane {
        match &job.partner {
            Some(partner) if self.partners.contains(partner) => Lane::Partner(partner.clone()),
            _ => Lane::Shared,
        }
    }

    fn log(&mut self, what: LaneChange) {
        self.log.push(LaneEvent {
            at: Instant::now(),
            what,
        });
    }

    pub fn log_entries(&self) -> Vec<LaneEvent> {
        self.log.clone()
    }

    /// Puts a message at the tail of `lane`.
    pub fn enqueue(&mut self, lane: Lane, job: QueuedJob) {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.log(LaneChange::Ready {
            seq,
            message_id: job.message_id.clone(),
            partner: job.partner.clone(),
            expired: lane == Lane::Expired,
        });
        self.ready.entry(lane).or_default().push_back((seq, job));
    }

    pub fn is_empty(&self) -> bool {
        self.ready.values().all(VecDeque::is_empty) && self.unacked.is_empty()
    }

    pub fn consume(&mut self, consumer: &str, slots: u32, prefetch: u32) {
        self.consumers.insert(
            consumer.to_owned(),
            Consumer {
                prefetch,
                pushed: VecDeque::new(),
            },
        );
        self.log(LaneChange::ConsumerUp {
            consumer: consumer.to_owned(),
            slots,
            prefetch,
        });
    }

    pub fn is_consumer(&self, consumer: &str) -> bool {
        self.consumers.contains_key(consumer)
    }

    /// The consumer is gone: it gets nothing more (its unacked are returned by the caller).
    pub fn cancel(&mut self, consumer: &str) {
        if self.consumers.remove(consumer).is_some() {
            self.log(LaneChange::ConsumerDown {
                consumer: consumer.to_owned(),
            });
        }
    }

    pub fn broker(&mut self, up: bool) {
        if !up {
            for consumer in self.consumers.values_mut() {
                consumer.pushed.clear();
            }
        }
        self.log(LaneChange::Broker { up });
    }

    /// The unacked deliveries `consumer` holds, by tag.
    pub fn held_by(&self, consumer: &str) -> Vec<u64> {
        self.unacked
            .iter()
            .filter(|(_, held)| held.consumer == consumer)
            .map(|(tag, _)| *tag)
            .collect()
    }

    /// Takes an unacked delivery off the books (acked, handed back, returned).
    pub fn end(&mut self, tag: u64) -> Option<Held> {
        let held = self.unacked.remove(&tag)?;
        if let Some(consumer) = self.consumers.get_mut(&held.consumer) {
            consumer.pushed.retain(|pushed| *pushed != tag);
        }
        self.log(LaneChange::Ended { tag });
        Some(held)
    }

    pub fn started(&mut self, tag: u64) -> bool {
        if !self.unacked.contains_key(&tag) {
            return false;
        }
        self.log(LaneChange::Started { tag });
        true
    }

    /// The next delivery pushed to `consumer`, in the order pushed.
    pub fn take_pushed(&mut self, consumer: &str) -> Option<(u64, QueuedJob)> {
        let tag = self.consumers.get_mut(consumer)?.pushed.pop_front()?;
        let held = self.unacked.get(&tag)?;
        Some((tag, held.job.clone()))
    }

    /// A pull by a worker that is not a registered consumer (the job path's unit tests): the
    /// expired jobs first, then the shared queue, then the lanes.
    pub fn pull(&mut self, consumer: &str) -> Option<(u64, Lane, QueuedJob)> {
        let (lane, (seq, job)) = self
            .ready
            .iter_mut()
            .find_map(|(lane, queue)| Some((lane.clone(), queue.pop_front()?)))?;
        let (tag, job) = self.hand(seq, lane.clone(), job, consumer);
        Some((tag, lane, job))
    }

    fn hand(&mut self, seq: u64, lane: Lane, job: QueuedJob, consumer: &str) -> (u64, QueuedJob) {
        self.next_tag += 1;
        let tag = self.next_tag;
        self.log(LaneChange::Delivered {
            seq,
            tag,
            consumer: consumer.to_owned(),
        });
        self.unacked.insert(
            tag,
            Held {
                consumer: consumer.to_owned(),
                lane,
                job: job.clone(),
            },
        );
        (tag, job)
    }

    /// Pushes every lane's head to a consumer with room on that lane, until none has room or
    /// nothing is ready; the order drawn from the interleave. Returns what was pushed, by
    /// consumer, for the trace.
    pub fn dispatch(&mut self) -> Vec<(String, Lane, u64, QueuedJob)> {
        let mut pushed = Vec::new();
        loop {
            let mut held: BTreeMap<(&str, &Lane), u32> = BTreeMap::new();
            for entry in self.unacked.values() {
                *held
                    .entry((entry.consumer.as_str(), &entry.lane))
                    .or_default() += 1;
            }
            let mut candidates: Vec<(Lane, String)> = Vec::new();
            for (lane, queue) in &self.ready {
                if queue.is_empty() {
                    continue;
                }
                for (name, consumer) in &self.consumers {
                    if held.get(&(name.as_str(), lane)).copied().unwrap_or(0) < consumer.prefetch {
                        candidates.push((lane.clone(), name.clone()));
                    }
                }
            }
            if candidates.is_empty() {
                return pushed;
            }
            let pick = match &mut self.interleave {
                Interleave::Random(rng) => rng.usize(..candidates.len()),
                Interleave::Ranked(rng, ranks) => {
                    for (lane, _) in &candidates {
                        if !ranks.contains_key(lane) {
                            ranks.insert(lane.clone(), rng.u64(..));
                        }
                    }
                    let first = candidates
                        .iter()
                        .map(|(lane, _)| ranks[lane])
                        .min()
                        .unwrap_or_default();
                    let of_first: Vec<usize> = (0..candidates.len())
                        .filter(|at| ranks[&candidates[*at].0] == first)
                        .collect();
                    of_first[rng.usize(..of_first.len())]
                }
            };
            let (lane, name) = candidates.swap_remove(pick);
            let Some((seq, job)) = self.ready.get_mut(&lane).and_then(VecDeque::pop_front) else {
                continue;
            };
            let (tag, job) = self.hand(seq, lane.clone(), job, &name);
            if let Some(consumer) = self.consumers.get_mut(&name) {
                consumer.pushed.push_back(tag);
            }
            pushed.push((name, lane, tag, job));
        }
    }
}
