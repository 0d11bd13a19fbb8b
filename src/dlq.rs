//! `autorenew dlq`: list the dead letters, replay them into the jobs queue once whatever
//! killed them is fixed, or drop one that can never succeed (a poison message).
//!
//! A dead letter is chosen by what `dlq list` shows: its payId (read from the body, whatever
//! the message kind: a creation job, a cancel, a Stripe event of one of our subscriptions),
//! optionally its partner, or its message id.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Destination, JobHeaders, JobMessage, Topology};
use crate::config::Settings;
use crate::domain::Job;
use crate::domain::cancel::{CANCEL_MESSAGE_TYPE, CancelJob};
use crate::domain::webhook::STRIPE_EVENT_MESSAGE_TYPE;

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Show the dead letters (they stay where they are): message id, kind, payId, partner,
    /// attempts, reason.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on the jobs queue with fresh attempts (default: every one).
    Replay {
        #[command(flatten)]
        select: Select,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Remove dead letters for good (a poison message that can never succeed), printing each.
    Drop {
        #[command(flatten)]
        select: Select,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

/// Which dead letters a replay or a drop takes: all of the given conditions hold.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "select", multiple = true)]
pub struct Select {
    /// The payId `dlq list` shows.
    #[arg(long)]
    pub pay_id: Option<String>,
    /// The partner `dlq list` shows (two partners may use one payId).
    #[arg(long)]
    pub partner: Option<String>,
    /// The message id `dlq list` shows first (a message that is no job has only this).
    #[arg(long)]
    pub message_id: Option<String>,
}

impl Select {
    /// Only this payId.
    pub fn pay_id(pay_id: &str) -> Self {
        Select {
            pay_id: Some(pay_id.to_owned()),
            ..Select::default()
        }
    }

    /// Only this message id.
    pub fn message_id(message_id: &str) -> Self {
        Select {
            message_id: Some(message_id.to_owned()),
            ..Select::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.pay_id.is_none() && self.partner.is_none() && self.message_id.is_none()
    }

    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let holds = |wanted: &Option<String>, actual: Option<&str>| {
            wanted
                .as_deref()
                .is_none_or(|wanted| actual == Some(wanted))
        };
        holds(&self.pay_id, letter.pay_id.as_deref())
            && holds(&self.partner, letter.partner_code.as_deref())
            && holds(&self.message_id, Some(letter.message_id.as_str()))
    }
}

/// One dead letter, as `dlq list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: String,
    /// `job`, `cancel`, `stripe_event`, or the message's own AMQP type.
    pub kind: String,
    pub reason: String,
    pub attempts: u32,
    /// The payId and partner the body names, when it can be read.
    pub pay_id: Option<String>,
    pub partner_code: Option<String>,
}

pub async fn run(
    settings: Settings,
    args: DlqArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match args.command {
        DlqCommand::List { limit, json } => {
            let letters = list(&settings, limit, shutdown).await?;
            for letter in &letters {
                if json {
                    println!("{}", serde_json::to_string(letter)?);
                } else {
                    println!("{}", line(letter));
                }
            }
            if !json {
                println!("{} dead letter(s)", letters.len());
            }
        }
        DlqCommand::Replay { select, limit } => {
            let replayed = replay(&settings, &select, limit, shutdown).await?;
            println!(
                "replayed {replayed} dead letter(s) into {}",
                Topology::from_settings(&settings).jobs()
            );
        }
        DlqCommand::Drop { select, limit } => {
            if select.is_empty() {
                anyhow::bail!("say which: --pay-id, --partner and/or --message-id");
            }
            let dropped = drop_letters(&settings, &select, limit, shutdown).await?;
            for letter in &dropped {
                println!("dropped {}", line(letter));
            }
            println!(
                "dropped {} dead letter(s) from {}",
                dropped.len(),
                Topology::from_settings(&settings).dead()
            );
        }
    }
    Ok(())
}

/// One dead letter as a line of `dlq list`.
fn line(letter: &DeadLetter) -> String {
    format!(
        "{}\t{}\t{}\t{}\tattempts={}\t{}",
        letter.message_id,
        letter.kind,
        letter.pay_id.as_deref().unwrap_or("-"),
        letter.partner_code.as_deref().unwrap_or("-"),
        letter.attempts,
        letter.reason
    )
}

/// Reads up to `limit` dead letters without removing them: nothing is acked, so closing the
/// channel puts every one back.
pub async fn list(
    settings: &Settings,
    limit: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<DeadLetter>> {
    let broker = connect(settings, shutdown.clone()).await?;
    let channel = broker.open_channel().await?;
    let queue = broker.topology().dead();
    let mut letters = Vec::new();
    while letters.len() < limit {
        let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        letters.push(describe(&message.delivery));
    }
    let _ = channel.close(200, "listed".into()).await;
    shutdown.cancel();
    Ok(letters)
}

/// Moves dead letters (all of them, or those `select` names) back to the jobs queue, each
/// confirmed before its dead letter is acked. A replay never revives a payId that ended: a job
/// whose result is stored finds it and announces it again, so an answer given stays the answer.
/// What replays do run again is a job the broker or a worker dead-lettered before any ending.
pub async fn replay(
    settings: &Settings,
    select: &Select,
    limit: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<usize> {
    let broker = connect(settings, shutdown.clone()).await?;
    let channel = broker.open_channel().await?;
    let dead = broker.topology().dead();
    let mut waiting = waiting(&channel, &dead).await?;
    let mut replayed = 0;
    while replayed < limit {
        let Some(delivery) = waiting.next(&channel).await? else {
            break;
        };
        let letter = describe(&delivery);
        // Without a selection, every dead letter, messages that are not jobs included: after a
        // fix (a worker that reads them now) they go back too, and one that is still
        // unreadable simply returns to the dead letters.
        if !select.matches(&letter) {
            continue;
        }
        let headers = JobHeaders(&delivery.properties);
        let (kind, partner) = (headers.kind(), headers.partner());
        let message = JobMessage {
            kind: &kind,
            body: &delivery.data,
            message_id: &letter.message_id,
            attempt: 1,
            parked: false,
            // Back into the partner's lane; a letter from before the lanes has none and goes
            // to the shared queue, as it would have then.
            partner: partner.as_deref(),
        };
        broker
            .publish_job(message, Destination::Jobs, Duration::from_secs(5))
            .await?;
        delivery.ack(BasicAckOptions::default()).await?;
        replayed += 1;
    }
    let _ = channel.close(200, "replayed".into()).await;
    shutdown.cancel();
    Ok(replayed)
}

/// Removes the dead letters `select` names (of those there now) and returns them. Each is
/// acked, so it is gone: for a message that can never succeed, once it has been looked at.
pub async fn drop_letters(
    settings: &Settings,
    select: &Select,
    limit: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<DeadLetter>> {
    let broker = connect(settings, shutdown.clone()).await?;
    let channel = broker.open_channel().await?;
    let dead = broker.topology().dead();
    let mut waiting = waiting(&channel, &dead).await?;
    let mut dropped = Vec::new();
    while dropped.len() < limit {
        let Some(delivery) = waiting.next(&channel).await? else {
            break;
        };
        let letter = describe(&delivery);
        if select.matches(&letter) {
            delivery.ack(BasicAckOptions::default()).await?;
            tracing::info!(message_id = %letter.message_id, reason = %letter.reason, "dead letter dropped");
            dropped.push(letter);
        }
    }
    // The others were only looked at: closing the channel puts them back.
    let _ = channel.close(200, "dropped".into()).await;
    shutdown.cancel();
    Ok(dropped)
}

/// The dead letters there when a run starts, taken one by one: one replayed and killed again
/// lands behind them, and must not be taken a second time in the same run.
struct Waiting {
    queue: String,
    left: u32,
}

async fn waiting(channel: &lapin::Channel, queue: &str) -> anyhow::Result<Waiting> {
    let left = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    Ok(Waiting {
        queue: queue.to_owned(),
        left,
    })
}

impl Waiting {
    /// The next one, unacked (an unacked letter returns when the channel closes).
    async fn next(&mut self, channel: &lapin::Channel) -> anyhow::Result<Option<Delivery>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let message = channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?;
        Ok(message.map(|m| m.delivery))
    }
}

/// Connects to the broker for a tool, or says it cannot.
async fn connect(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Broker> {
    let topology = Topology::from_settings(settings);
    let broker = Broker::start(settings.amqp.url.clone(), topology, shutdown);
    if !broker.wait_ready(Duration::from_secs(10)).await {
        anyhow::bail!("RabbitMQ at `amqp.url` is not reachable");
    }
    Ok(broker)
}

fn describe(delivery: &Delivery) -> DeadLetter {
    let headers = JobHeaders(&delivery.properties);
    let kind = headers.kind();
    let (shown, ids) = match kind.as_str() {
        CANCEL_MESSAGE_TYPE => (
            "cancel",
            CancelJob::decode(&delivery.data)
                .ok()
                .map(|c| (c.pay_id.to_string(), c.partner_code.to_string())),
        ),
        STRIPE_EVENT_MESSAGE_TYPE => ("stripe_event", stripe_event_ids(&delivery.data)),
        _ => (
            "job",
            Job::decode(&delivery.data)
                .ok()
                .map(|j| (j.pay_id.to_string(), j.partner_code.to_string())),
        ),
    };
    DeadLetter {
        message_id: headers.message_id(),
        kind: shown.to_owned(),
        // Dead-lettered by RabbitMQ itself (before the expired-jobs queue existed, or a
        // message that is not a job): its x-death header says more.
        reason: headers
            .death_reason()
            .unwrap_or_else(|| "dead-lettered by RabbitMQ (delivery limit or rejection)".into()),
        attempts: headers.attempt(),
        pay_id: ids.as_ref().map(|(pay_id, _)| pay_id.clone()),
        partner_code: ids.map(|(_, partner)| partner),
    }
}

/// The payId and partner in the metadata of a Stripe event's subscription: on the object for
/// a subscription's events, under the invoice's parent for an invoice's (docs/partners.md#the-rest-of-an-auto-renewals-life).
fn stripe_event_ids(body: &[u8]) -> Option<(String, String)> {
    let event: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = &event["data"]["object"];
    [
        &object["metadata"],
        &object["parent"]["subscription_details"]["metadata"],
        &object["subscription_details"]["metadata"],
    ]
    .into_iter()
    .find_map(|metadata| {
        let pay_id = metadata["payId"].as_str()?;
        let partner = metadata["partnerCode"].as_str()?;
        Some((pay_id.to_owned(), partner.to_owned()))
    })
}
