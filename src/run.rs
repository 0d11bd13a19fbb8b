//! `autorenew run`: the intake, a worker and (without a Stripe key) the simulator, in one
//! process, for a laptop and the demo. It composes them; none of them knows of the others.
//!
//! The simulator is not this library's code (docs/design.md, "Crates"): the caller gives `run` a
//! [`StartSimulator`], which the binary makes from the `stripe-sim` crate (`src/wiring.rs`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::{intake, push, sign_tool, worker};

/// The key `run` gives the worker for its own simulator (any `sk_test_…` works there).
pub const SIM_KEY: &str = "sk_test_autorenew_simulator";
/// Where `run` starts its simulator unless told otherwise, and where `reconcile` finds it.
pub const SIM_LISTEN: &str = "127.0.0.1:12111";
/// The secret `run`'s simulator signs its webhooks with when `stripe.webhook_secrets` names
/// none, so `autorenew reconcile` can sign what it feeds to the same intake with no setup. A
/// known value: it lets a local process post events about the simulator's subscriptions,
/// nothing more, and only to an intake started by `run` with its simulator.
pub const SIM_WEBHOOK_SECRET: &str = "whsec_autorenew_run_local_simulator";
/// The simulator's publishable key, when the configuration names none.
const SIM_PUBLISHABLE_KEY: &str = "pk_test_autorenew_simulator";

/// Flags of `autorenew run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Where the built-in simulator listens when no Stripe key is configured.
    #[arg(long, default_value = SIM_LISTEN)]
    pub sim_listen: SocketAddr,
}

/// Starts the Stripe simulator `run` uses when no Stripe key is configured: binds
/// [`SimulatorWanted::listen`], makes the one webhook endpoint, and returns without serving yet.
pub type StartSimulator = fn(SimulatorWanted) -> anyhow::Result<Simulator>;

/// What `run` asks of its simulator: an address, and this run's intake as its one webhook
/// endpoint.
#[derive(Debug)]
pub struct SimulatorWanted {
    /// `--sim-listen` (port 0: any free port).
    pub listen: SocketAddr,
    /// The intake's `/stripe/webhook`.
    pub webhook_url: String,
    /// What the deliveries are signed with: the secret the intake checks.
    pub webhook_secret: SecretString,
    /// The event types the endpoint gets.
    pub webhook_events: Vec<String>,
    /// Cancelled once the worker has drained (the jobs in hand still call the simulator).
    pub stop: CancellationToken,
}

/// A simulator bound to its address, not serving yet.
pub struct Simulator {
    pub address: SocketAddr,
    /// Serves until [`SimulatorWanted::stop`] is cancelled.
    pub serve: Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>,
}

/// What `run` started, for tests and the banner.
#[derive(Debug, Clone)]
pub struct Running {
    pub intake: SocketAddr,
    pub worker: SocketAddr,
    pub simulator: Option<SocketAddr>,
    /// The notifier's probes, when a partner has a push.
    pub notifier: Option<SocketAddr>,
    /// The Redis key prefix in use: with the simulator, one of this run's own.
    pub redis_key_prefix: String,
}

/// The Redis key prefix of a run with the built-in simulator: the configured one and the
/// moment (Unix milliseconds) the run started. The simulator starts empty every time, so the
/// results, records and customers Redis remembers from an earlier run name objects it does not
/// know; keys of their own keep each run's Redis in step with its simulator. Those of ended or
/// failed payIds expire with `redis.record_ttl_secs`; a live subscription's stay, as in
/// production (delete them with `redis-cli --scan --pattern '<prefix>.run-*'` on a laptop).
pub fn run_key_prefix(configured: &str) -> String {
    let millis = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    format!("{configured}.run-{millis}")
}

/// Builds the parts; `start` spawns them and returns at once. `start_simulator` starts the
/// simulator when no Stripe key is configured.
pub async fn start(
    mut settings: Settings,
    args: &RunArgs,
    start_simulator: StartSimulator,
    shutdown: CancellationToken,
) -> anyhow::Result<(Running, tokio::task::JoinSet<anyhow::Result<()>>)> {
    let mut tasks = tokio::task::JoinSet::new();
    // The simulator stops after the worker has drained: the jobs in hand still call it.
    let sim_stop = CancellationToken::new();
    let with_simulator = settings.stripe.secret_key.expose_secret().is_empty();
    // The simulator's webhooks come to this intake, so the whole life of an auto-renewal
    // (renewals, failed charges, cancels) runs on a laptop. Signed with the first configured
    // secret, else a known local one, which `autorenew reconcile` finds from the same config.
    let webhook_secret = settings
        .stripe
        .webhook_secrets
        .first()
        .cloned()
        .unwrap_or_else(|| SecretString::from(SIM_WEBHOOK_SECRET));
    if with_simulator {
        if settings.stripe.webhook_secrets.is_empty() {
            settings.stripe.webhook_secrets.push(webhook_secret.clone());
        }
        settings.redis.key_prefix = run_key_prefix(&settings.redis.key_prefix);
    }
    let intake = intake::Application::build(&settings, shutdown.clone()).await?;
    let simulator = if with_simulator {
        let app = start_simulator(SimulatorWanted {
            listen: args.sim_listen,
            webhook_url: format!("http://{}/stripe/webhook", intake.local_addr()),
            webhook_secret,
            // The four the worker acts on (docs/partners.md#the-rest-of-an-auto-renewals-life), as one would ask of Stripe.
            webhook_events: crate::domain::webhook::ACTED_ON
                .iter()
                .map(|kind| (*kind).to_owned())
                .collect(),
            stop: sim_stop.clone(),
        })?;
        let address = app.address;
        settings.stripe.secret_key = SecretString::from(SIM_KEY);
        settings.stripe.api_base = format!("http://{address}");
        // Our own simulator speaks HTTP/2 without negotiation: one connection for all calls.
        settings.stripe.http2_prior_knowledge = true;
        if settings.stripe.publishable_key.is_empty() {
            settings.stripe.publishable_key = SIM_PUBLISHABLE_KEY.to_owned();
        }
        // Built before the simulator listened: `/stripeSubAuthorization` learns of it now.
        intake.use_stripe(&settings)?;
        tasks.spawn(app.serve);
        Some(address)
    } else {
        None
    };
    let worker = worker::Application::build(&settings).await?;
    // The push's notifier, when a partner has a push (docs/operations.md#the-partner-push).
    let notifier = if settings.partners.iter().any(|p| p.push.is_some()) {
        Some(push::Application::build(&settings).await?)
    } else {
        None
    };
    let running = Running {
        intake: intake.local_addr(),
        worker: worker.local_addr(),
        simulator,
        notifier: notifier.as_ref().map(push::Application::local_addr),
        redis_key_prefix: settings.redis.key_prefix.clone(),
    };
    if let Some(notifier) = notifier {
        tasks.spawn(notifier.run_until_stopped(shutdown.clone()));
    }
    tasks.spawn(intake.run_until_stopped(shutdown.clone()));
    tasks.spawn(async move {
        let drained = worker.run_until_stopped(shutdown).await;
        sim_stop.cancel();
        drained
    });
    Ok((running, tasks))
}

pub async fn run(
    settings: Settings,
    args: RunArgs,
    start_simulator: StartSimulator,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let partner = settings.partners.first().cloned();
    let (running, mut tasks) = start(settings, &args, start_simulator, shutdown).await?;
    println!("autorenew run");
    println!(
        "  intake     http://{}  (POST /stripeSubAuthorization, /stripeSubDirectly, /resultQuery, /cancelAutoRenewalRecord, /queryAutoRenewalRecord)",
        running.intake
    );
    println!(
        "  worker     http://{}  (probes and metrics)",
        running.worker
    );
    if let Some(notifier) = running.notifier {
        println!(
            "  notifier   http://{notifier}  (pushes results to the partners' URLs; probes and metrics)"
        );
    }
    match running.simulator {
        Some(sim) => {
            println!(
                "  stripe-sim http://{sim}  (no stripe.secret_key configured; GET /_sim/stats; POST /_sim/advance moves its clock; its webhooks come to the intake)"
            );
            println!(
                "  redis      keys under {prefix}  (fresh each run: the simulator starts empty; for tools that read them: AUTORENEW__REDIS__KEY_PREFIX={prefix})",
                prefix = running.redis_key_prefix
            );
        }
        None => println!("  stripe     the real Stripe API (stripe.secret_key is set)"),
    }
    println!("  events     autorenew events  (the result events as they are published)");
    if let Some(partner) = partner {
        let body = format!(
            r#"{{"email":"421516116@qq.com","partnerCode":"{}","payAmount":"19.99","payCurrency":"usd","payId":"DEMO{}","plan_id":"PLAN_MONTHLY_1GB","pm_id":"pm_card_visa","tradeType":"stripeSubDirectly","version":"3.0"}}"#,
            partner.code,
            time::OffsetDateTime::now_utc().unix_timestamp()
        );
        let filled =
            sign_tool::sign_body(&body, partner.secret.expose_secret(), Some(now_millis()))?;
        println!("\nTry it (the sign is valid for intake.max_clock_skew_ms):\n");
        println!(
            "  curl -s -H 'content-type: application/json' -d '{filled}' http://{}/stripeSubDirectly\n",
            running.intake
        );
        println!("or sign a body of your own:\n");
        println!(
            "  echo '{body}' | autorenew sign --secret <secret> --fill | curl -s -H 'content-type: application/json' --data @- http://{}/stripeSubDirectly",
            running.intake
        );
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

fn now_millis() -> u64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    u64::try_from(nanos / 1_000_000).unwrap_or(0)
}
