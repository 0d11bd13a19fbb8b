//! `autorenew dlq`: list the dead letters, and replay them into the jobs queue once whatever
//! killed them is fixed.

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::broker::{JOB_ROUTING_KEY, Message};
use crate::config::Settings;
use crate::domain::job::JOB_MESSAGE_TYPE;
use crate::domain::{FailureCode, Job};
use crate::store::Store;
use crate::worker::route::{ATTEMPT_HEADER, DEATH_REASON_HEADER, attempt_of};

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
                settings.topology().jobs()
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
    let broker = crate::worker::broker_for_tools(settings, shutdown.clone()).await?;
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
/// confirmed before its dead letter is acked. A job that failed only because Stripe was unavailable gets
/// its stored result cleared, so the worker runs it again instead of announcing the old failure.
pub async fn replay(
    settings: &Settings,
    pay_id: Option<&str>,
    limit: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<usize> {
    let broker = crate::worker::broker_for_tools(settings, shutdown.clone()).await?;
    let store = Store::new(&settings.redis)?;
    let channel = broker.open_channel().await?;
    let dead = broker.topology().dead();
    let jobs = broker.topology().jobs();
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
        if let Ok(job) = Job::decode(&delivery.data)
            && let Some(result) = store.result(&job.pay_id).await?
            && result
                .error
                .as_ref()
                .is_some_and(|e| e.code == FailureCode::StripeUnavailable)
        {
            store.clear_result(&job.pay_id).await?;
        }
        broker
            .publish(
                Message {
                    exchange: &jobs,
                    routing_key: JOB_ROUTING_KEY,
                    body: &delivery.data,
                    content_type: "application/json",
                    message_id: &letter.message_id,
                    kind: JOB_MESSAGE_TYPE,
                    headers: vec![(ATTEMPT_HEADER, AMQPValue::LongUInt(1))],
                    mandatory: true,
                },
                Duration::from_secs(5),
            )
            .await?;
        delivery.ack(BasicAckOptions::default()).await?;
        replayed += 1;
    }
    let _ = channel.close(200, "replayed".into()).await;
    shutdown.cancel();
    Ok(replayed)
}

fn describe(delivery: &lapin::message::Delivery) -> DeadLetter {
    let reason = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(DEATH_REASON_HEADER).cloned())
        .and_then(|value| match value {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            _ => None,
        })
        // Dead-lettered by RabbitMQ itself (delivery limit): its x-death header says so.
        .unwrap_or_else(|| "dead-lettered by RabbitMQ (delivery limit or rejection)".into());
    let job = Job::decode(&delivery.data).ok();
    DeadLetter {
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
        reason,
        attempts: attempt_of(&delivery.properties),
        pay_id: job.as_ref().map(|j| j.pay_id.to_string()),
        partner_code: job.as_ref().map(|j| j.partner_code.to_string()),
    }
}
