//! `autorenew push status|enable|test` (docs/operations.md#the-partner-push): what an operator needs of the push.

use anyhow::Context;
use bytes::Bytes;

use super::client::PushClient;
use crate::config::Settings;
use crate::domain::push::{self, PushSecret};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    #[command(subcommand)]
    pub command: PushCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PushCommand {
    /// Print each pushing partner's pending and failed events, breaker and switch.
    Status {
        /// Only this partner.
        partner: Option<String>,
    },
    /// Resume a disabled push: its pending events are attempted again, its breaker closed.
    Enable { partner: String },
    /// Send a signed `autorenew.ping` event to the partner's URL now and print the answer.
    Test { partner: String },
}

pub async fn run(settings: Settings, args: PushArgs) -> anyhow::Result<()> {
    let store = Store::new(&settings.redis)?;
    match args.command {
        PushCommand::Status { partner } => {
            let partners: Vec<_> = settings
                .partners
                .iter()
                .filter(|p| p.push.is_some())
                .filter(|p| partner.as_deref().is_none_or(|code| p.code == code))
                .collect();
            if partners.is_empty() {
                anyhow::bail!(
                    "no partner with a push{}",
                    match &partner {
                        Some(code) => format!(" is called `{code}`"),
                        None => " is configured".to_owned(),
                    }
                );
            }
            for partner in partners {
                println!("{}", status_line(&store, &partner.code).await?);
            }
            Ok(())
        }
        PushCommand::Enable { partner } => {
            pushing(&settings, &partner)?;
            store.push_enable(&partner).await?;
            println!("{partner}: push enabled; its pending events are attempted again");
            Ok(())
        }
        PushCommand::Test { partner } => {
            let push = pushing(&settings, &partner)?;
            let client = PushClient::new(&settings.push)?;
            let now = crate::domain::clock::now_rfc3339();
            let id = format!("ping:{}", uuid::Uuid::new_v4().simple());
            let body = Bytes::from(push::ping_event(&id, &partner, "autorenew", &now));
            let keys: Vec<PushSecret> = push.keys();
            let webhook_id = push::webhook_id(&id);
            let attempted = client.send(&push.url, &webhook_id, &keys, &body).await;
            let answer = match (attempted.status, attempted.error) {
                (Some(status), _) => format!("HTTP {status}"),
                (None, Some(error)) => error.to_owned(),
                (None, None) => "no answer".to_owned(),
            };
            println!(
                "{partner}: {} webhook-id {webhook_id}: {answer} in {} ms",
                push.url,
                attempted.duration.as_millis()
            );
            if attempted.delivered() {
                Ok(())
            } else {
                anyhow::bail!("the ping was not answered with a 2xx")
            }
        }
    }
}

fn pushing<'a>(
    settings: &'a Settings,
    partner: &str,
) -> anyhow::Result<&'a crate::config::PartnerPush> {
    settings
        .partners
        .iter()
        .find(|p| p.code == partner)
        .with_context(|| format!("partner `{partner}` is not configured"))?
        .push
        .as_ref()
        .with_context(|| format!("partner `{partner}` has no [partners.push]"))
}

async fn status_line(store: &Store, partner: &str) -> anyhow::Result<String> {
    let state = store.push_state(partner).await?;
    let counts = store.push_counts(partner).await?;
    let now = i64::try_from(crate::domain::clock::now_millis()).unwrap_or(i64::MAX);
    let switch = if state.disabled {
        format!("disabled ({})", state.disabled_reason)
    } else {
        "enabled".to_owned()
    };
    let breaker = if state.open_until_ms == 0 {
        "closed".to_owned()
    } else if state.open_until_ms > now {
        format!("open for {} s", (state.open_until_ms - now) / 1000 + 1)
    } else {
        "half-open".to_owned()
    };
    let oldest = counts
        .oldest_pending_ms
        .map(|at| format!("{} s", (now - at).max(0) / 1000))
        .unwrap_or_else(|| "-".to_owned());
    Ok(format!(
        "{partner}: {switch}, breaker {breaker} ({} consecutive failures), pending {}, failed {}, oldest pending {oldest}",
        state.failures, counts.pending, counts.failed
    ))
}
