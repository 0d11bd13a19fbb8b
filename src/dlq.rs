//! `autorenew dlq`: list the dead letters, and replay them into the jobs queue once whatever
//! killed them is fixed.

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Destination, JobHeaders, JobMessage, Topology};
use crate::config::Settings;
use crate::domain::Job;

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Show the dead letters (they stay where they are).
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on the jobs queue with fresh attempts.
    Replay {
        /// Only this payId (default: every dead letter).
        #[arg(long)]
        pay_id: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

/// One dead letter, as `dlq list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: String,
    pub reason: String,
    pub attempts: u32,
    /// The job's payId and partner, when the body is a job.
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
                    println!(
                        "{}\t{}\t{}\tattempts={}\t{}",
                        letter.message_id,
                        letter.pay_id.as_deref().unwrap_or("-"),
                        letter.partner_code.as_deref().unwrap_or("-"),
                        letter.attempts,
                        letter.reason
                    );
                }
            }
            if !json {
                println!("{} dead letter(s)", letters.len());
            }
        }
        DlqCommand::Replay { pay_id, limit } => {
            let replayed = replay(&settings, pay_id.as_deref(), limit, shutdown).await?;
            println!(
                "replayed {replayed} dead letter(s) into {}",
                Topology::from_settings(&settings).jobs()
            );
        }
    }
    Ok(())
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

/// Moves dead letters (all of them, or the jobs of one payId) back to the jobs queue, each
/// confirmed before its dead letter is acked. A replay never revives a payId that ended: a job
/// whose result is stored finds it and announces it again, so an answer given stays the answer.
/// What replays do work is a job the broker or a worker dead-lettered before any ending.
pub async fn replay(
    settings: &Settings,
    pay_id: Option<&str>,
    limit: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<usize> {
    let broker = connect(settings, shutdown.clone()).await?;
    let channel = broker.open_channel().await?;
    let dead = broker.topology().dead();
    // Only the letters there now: one replayed and killed again lands behind them, and must not
    // be replayed a second time in the same run.
    let waiting = channel
        .queue_declare(
            dead.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    let mut replayed = 0;
    let mut seen = 0;
    while replayed < limit && seen < waiting {
        let Some(message) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        seen += 1;
        let delivery = message.delivery;
        let letter = describe(&delivery);
        // With a payId, only that job; without, every dead letter, messages that are not jobs
        // included: after a fix (a worker that reads them now) they go back too, and one that is
        // still unreadable simply returns to the dead letters.
        if pay_id.is_some_and(|wanted| letter.pay_id.as_deref() != Some(wanted)) {
            continue;
        }
        let kind = JobHeaders(&delivery.properties).kind();
        let message = JobMessage {
            kind: &kind,
            body: &delivery.data,
            message_id: &letter.message_id,
            attempt: 1,
            parked: false,
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

/// Connects to the broker for a tool, or says it cannot.
async fn connect(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Broker> {
    let topology = Topology::from_settings(settings);
    let broker = Broker::start(settings.amqp.url.clone(), topology, shutdown);
    if !broker.wait_ready(Duration::from_secs(10)).await {
        anyhow::bail!("RabbitMQ at `amqp.url` is not reachable");
    }
    Ok(broker)
}

fn describe(delivery: &lapin::message::Delivery) -> DeadLetter {
    let headers = JobHeaders(&delivery.properties);
    let job = Job::decode(&delivery.data).ok();
    DeadLetter {
        message_id: headers.message_id(),
        // Dead-lettered by RabbitMQ itself (before the expired-jobs queue existed, or a
        // message that is not a job): its x-death header says more.
        reason: headers
            .death_reason()
            .unwrap_or_else(|| "dead-lettered by RabbitMQ (delivery limit or rejection)".into()),
        attempts: headers.attempt(),
        pay_id: job.as_ref().map(|j| j.pay_id.to_string()),
        partner_code: job.as_ref().map(|j| j.partner_code.to_string()),
    }
}
