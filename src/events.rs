//! `autorenew events`: prints the result events as they are published, one JSON object a line,
//! until Ctrl-C, from a `tap` on `<prefix>.results`: a queue of its own (server-named, exclusive,
//! auto-delete), so it takes nothing from anyone else's queue and vanishes with it. The tests'
//! stacks collect the events through the same `tap`.

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer, ExchangeKind};
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Topology};
use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Routing-key pattern of the events to print (`subscription.renewed.*`,
    /// `*.*.P000818`, …); `#` is every event.
    #[arg(long, default_value = "#")]
    pub key: String,
    /// Stop after this many events (default: at Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
}

/// Prints each event's body to stdout as one line, in the order the broker hands them over.
pub async fn run(
    settings: Settings,
    args: EventsArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let broker_stop = CancellationToken::new();
    let _stop_broker = broker_stop.clone().drop_guard();
    let broker = Broker::start(
        settings.amqp.url.clone(),
        Topology::from_settings(&settings),
        broker_stop,
    );
    if !broker.wait_ready(Duration::from_secs(10)).await {
        anyhow::bail!("RabbitMQ at `amqp.url` is not reachable");
    }
    let channel = broker.open_channel().await?;
    let exchange = broker.topology().results();
    let mut consumer = tap(&channel, &exchange, &args.key, "autorenew-events").await?;
    // On stderr, so stdout is only events: from here on, no event is missed.
    eprintln!(
        "autorenew events: printing the events of {exchange} with key `{}`; Ctrl-C to stop",
        args.key
    );
    let mut printed = 0;
    let mut stdout = std::io::stdout().lock();
    while args.count.is_none_or(|count| printed < count) {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break,
            delivery = consumer.next() => delivery,
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Err(error.into()),
            None => anyhow::bail!("the broker ended the subscription"),
        };
        writeln!(stdout, "{}", one_line(&delivery.data))?;
        stdout.flush()?;
        printed += 1;
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

/// A queue of the caller's own on the results exchange `exchange`, bound with `key` (a
/// routing-key pattern), and its consumer. The queue is server-named, exclusive and auto-delete,
/// so it takes nothing from anyone else's queue and goes with the channel; deliveries need no
/// ack. The exchange is declared as the service declares it (a durable topic), so a tap may
/// start before any intake or worker has.
pub async fn tap(
    channel: &Channel,
    exchange: &str,
    key: &str,
    consumer_tag: &str,
) -> Result<Consumer, lapin::Error> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_consume(
            queue.name().clone(),
            consumer_tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The body as one line: as published when it is one line already (events are compact JSON),
/// else made compact when it is JSON, else the text with its line breaks as spaces.
fn one_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if !text.contains('\n') {
        return text.into_owned();
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => value.to_string(),
        Err(_) => text.replace('\n', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn an_event_is_printed_on_one_line() {
        assert_eq!(
            one_line(b"{\n  \"id\": \"e1\",\n  \"data\": {}\n}"),
            r#"{"data":{},"id":"e1"}"#
        );
        assert_eq!(one_line(br#"{"z":1,"a":2}"#), r#"{"z":1,"a":2}"#);
        assert_eq!(one_line(b"not\njson"), "not json");
    }
}
