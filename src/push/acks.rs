//! The acks of one lane's channel, gathered: each delivery's task says how it ended, and one task
//! per channel sends the acks and nacks, in order, folding a run of consecutive acked deliveries
//! into one `basic.ack` with `multiple` (docs/design.md#one-delivery). A quorum queue writes each
//! ack frame to its log, so under load one frame for several deliveries saves the broker work.
//!
//! Nothing is acked earlier than before: a delivery is acked only once its task ended it with
//! [`DeliveryEnd::Ack`] (its attempt logged, its retry confirmed), and `multiple` covers only
//! a run in which every delivery did; a delivery that ended past one still in hand is acked
//! alone, so a slow attempt holds back no other's ack. Hand-backs are nacked one by one, before
//! any later ack is sent: one task sends every frame of the channel, so none can overtake another.

use std::collections::BTreeSet;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;

use super::deliver::DeliveryEnd;

/// What the acks task hears of one delivery.
enum Event {
    /// Taken from the consumer, in the order the broker delivered (its tags rise).
    Taken(u64),
    Ended(u64, DeliveryEnd),
}

/// Tells the channel's acks task about its deliveries; cloned into each delivery's task. The
/// acks task ends once every clone is dropped, after sending what it was told.
#[derive(Clone)]
pub(super) struct Acks {
    events: mpsc::UnboundedSender<Event>,
}

impl Acks {
    /// The acks of `channel` and the task that sends them (to run until it ends by itself).
    pub(super) fn new(channel: Channel, partner: String) -> (Acks, impl Future<Output = ()>) {
        let (events, received) = mpsc::unbounded_channel();
        (Acks { events }, run(channel, partner, received))
    }

    /// A delivery was taken: until it ends, no `multiple` ack reaches past it.
    pub(super) fn taken(&self, tag: u64) {
        let _ = self.events.send(Event::Taken(tag));
    }

    pub(super) fn ended(&self, tag: u64, end: DeliveryEnd) {
        let _ = self.events.send(Event::Ended(tag, end));
    }
}

/// A frame to send, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// With `multiple`, every delivery of the channel up to `tag` that is not settled yet.
    Ack { tag: u64, multiple: bool },
    /// Back to the queue.
    Nack(u64),
}

/// The deliveries of one channel not settled yet.
#[derive(Debug, Default)]
struct Ledger {
    /// Taken and neither acked nor nacked.
    in_hand: BTreeSet<u64>,
    /// Ended with an ack not yet sent.
    to_ack: BTreeSet<u64>,
}

impl Ledger {
    fn taken(&mut self, tag: u64) {
        self.in_hand.insert(tag);
    }

    /// A hand-back is nacked at once, so no later `multiple` ack can reach it first.
    fn ended(&mut self, tag: u64, end: DeliveryEnd, frames: &mut Vec<Frame>) {
        match end {
            DeliveryEnd::Ack => {
                self.to_ack.insert(tag);
            }
            DeliveryEnd::HandBack => {
                self.in_hand.remove(&tag);
                frames.push(Frame::Nack(tag));
            }
        }
    }

    /// The acks due: one `multiple` for the run, from the oldest delivery in hand, of deliveries
    /// that all ended acked; past a delivery still in hand, one by one.
    fn flush(&mut self, frames: &mut Vec<Frame>) {
        let run = self
            .in_hand
            .iter()
            .take_while(|tag| self.to_ack.contains(tag))
            .last()
            .copied();
        if let Some(upto) = run {
            frames.push(Frame::Ack {
                tag: upto,
                multiple: true,
            });
            self.in_hand.retain(|tag| *tag > upto);
            self.to_ack.retain(|tag| *tag > upto);
        }
        for tag in std::mem::take(&mut self.to_ack) {
            self.in_hand.remove(&tag);
            frames.push(Frame::Ack {
                tag,
                multiple: false,
            });
        }
    }
}

async fn run(channel: Channel, partner: String, mut events: mpsc::UnboundedReceiver<Event>) {
    let mut ledger = Ledger::default();
    let mut batch = Vec::new();
    let mut frames = Vec::new();
    // Whatever arrived while the last frames were sent is settled together.
    while events.recv_many(&mut batch, 1024).await > 0 {
        for event in batch.drain(..) {
            match event {
                Event::Taken(tag) => ledger.taken(tag),
                Event::Ended(tag, end) => ledger.ended(tag, end, &mut frames),
            }
        }
        ledger.flush(&mut frames);
        for frame in frames.drain(..) {
            let sent = match frame {
                Frame::Ack { tag, multiple } => {
                    channel.basic_ack(tag, BasicAckOptions { multiple }).await
                }
                Frame::Nack(tag) => {
                    let requeue = BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    };
                    channel.basic_nack(tag, requeue).await
                }
            };
            if let Err(error) = sent {
                // The channel is gone: RabbitMQ delivers what it held again.
                tracing::warn!(%error, partner, "push ack/nack failed; redelivered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The broker's side of one channel: what each frame settles, as RabbitMQ reads it (an
    /// unknown tag closes the channel).
    #[derive(Default)]
    struct Broker {
        unacked: BTreeSet<u64>,
        settled: BTreeMap<u64, DeliveryEnd>,
    }

    impl Broker {
        fn apply(&mut self, frame: Frame) {
            let (tag, multiple, end) = match frame {
                Frame::Ack { tag, multiple } => (tag, multiple, DeliveryEnd::Ack),
                Frame::Nack(tag) => (tag, false, DeliveryEnd::HandBack),
            };
            assert!(self.unacked.contains(&tag), "unknown delivery tag {tag}");
            let covered: Vec<u64> = if multiple {
                self.unacked.range(..=tag).copied().collect()
            } else {
                vec![tag]
            };
            for tag in covered {
                self.unacked.remove(&tag);
                self.settled.insert(tag, end);
            }
        }
    }

    #[test]
    fn every_delivery_is_settled_as_it_ended_whatever_the_order() {
        let mut frames_sent = 0;
        let mut deliveries = 0;
        for seed in 0..500 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let (mut ledger, mut broker) = (Ledger::default(), Broker::default());
            let mut ends = BTreeMap::new();
            let mut in_flight: Vec<u64> = Vec::new();
            let mut frames = Vec::new();
            let (total, window) = (rng.u64(1..60), rng.usize(1..17));
            let mut next = 1;
            while next <= total || !in_flight.is_empty() {
                // Take deliveries up to the prefetch, end some in any order, flush now and then.
                while next <= total && in_flight.len() < window && rng.bool() {
                    broker.unacked.insert(next);
                    ledger.taken(next);
                    in_flight.push(next);
                    next += 1;
                }
                if !in_flight.is_empty() && rng.bool() {
                    let tag = in_flight.swap_remove(rng.usize(..in_flight.len()));
                    let end = if rng.u8(..10) == 0 {
                        DeliveryEnd::HandBack
                    } else {
                        DeliveryEnd::Ack
                    };
                    ends.insert(tag, end);
                    ledger.ended(tag, end, &mut frames);
                }
                if rng.bool() || (next > total && in_flight.is_empty()) {
                    ledger.flush(&mut frames);
                    for frame in frames.drain(..) {
                        // Nothing is settled before its delivery ended, nor otherwise.
                        broker.apply(frame);
                        frames_sent += 1;
                    }
                    for (tag, end) in &broker.settled {
                        assert_eq!(ends.get(tag), Some(end), "seed {seed}: tag {tag}");
                    }
                }
            }
            assert_eq!(broker.settled, ends, "seed {seed}");
            assert!(broker.unacked.is_empty(), "seed {seed}");
            deliveries += total;
        }
        // The point of it: fewer frames than deliveries.
        assert!(
            frames_sent < deliveries,
            "{frames_sent} frames for {deliveries}"
        );
    }
}
