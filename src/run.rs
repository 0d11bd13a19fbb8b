//! `autorenew run`: the intake, a worker and (without a Stripe key) the simulator, in one
//! process, for a laptop and the demo. It composes them; none of them knows of the others.

use std::net::SocketAddr;

use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::{intake, sign_tool, sim, worker};

/// The key `run` gives the worker for its own simulator (any `sk_test_…` works there).
const SIM_KEY: &str = "sk_test_autorenew_simulator";
/// The simulator's publishable key, when the configuration names none.
const SIM_PUBLISHABLE_KEY: &str = "pk_test_autorenew_simulator";

/// Flags of `autorenew run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Where the built-in simulator listens when no Stripe key is configured.
    #[arg(long, default_value = "127.0.0.1:12111")]
    pub sim_listen: SocketAddr,
}

/// What `run` started, for tests and the banner.
#[derive(Debug, Clone)]
pub struct Running {
    pub intake: SocketAddr,
    pub worker: SocketAddr,
    pub simulator: Option<SocketAddr>,
}

/// Builds the parts; `start` spawns them and returns at once.
pub async fn start(
    mut settings: Settings,
    args: &RunArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<(Running, tokio::task::JoinSet<anyhow::Result<()>>)> {
    let mut tasks = tokio::task::JoinSet::new();
    // The simulator stops after the worker has drained: the jobs in hand still call it.
    let sim_stop = CancellationToken::new();
    let with_simulator = settings.stripe.secret_key.expose_secret().is_empty();
    // The simulator's webhooks come to this intake, signed with a secret made for this run, so
    // the whole life of an auto-renewal (renewals, failed charges, cancels) runs on a laptop.
    let webhook_secret = format!("whsec_{}", uuid::Uuid::new_v4().simple());
    if with_simulator {
        settings
            .stripe
            .webhook_secrets
            .push(SecretString::from(webhook_secret.clone()));
    }
    let intake = intake::Application::build(&settings, shutdown.clone()).await?;
    let simulator = if with_simulator {
        let mut sim_settings = sim::SimSettings {
            listen: args.sim_listen,
            ..sim::SimSettings::for_tests()
        };
        sim_settings
            .webhooks
            .endpoints
            .push(sim::webhooks::EndpointSettings {
                url: format!("http://{}/stripe/webhook", intake.local_addr()),
                secret: SecretString::from(webhook_secret),
                // The four the worker acts on (CONTRACT §9.2), as one would ask of Stripe.
                enabled_events: crate::domain::webhook::ACTED_ON
                    .iter()
                    .map(|kind| (*kind).to_owned())
                    .collect(),
            });
        let app = sim::Application::build(sim_settings)?;
        let address = app.address();
        settings.stripe.secret_key = SecretString::from(SIM_KEY);
        settings.stripe.api_base = format!("http://{address}");
        // Our own simulator speaks HTTP/2 without negotiation: one connection for all calls.
        settings.stripe.http2_prior_knowledge = true;
        if settings.stripe.publishable_key.is_empty() {
            settings.stripe.publishable_key = SIM_PUBLISHABLE_KEY.to_owned();
        }
        // Built before the simulator listened: `/stripeSubAuthorization` learns of it now.
        intake.use_stripe(&settings)?;
        tasks.spawn(app.run_until_stopped(sim_stop.clone()));
        Some(address)
    } else {
        None
    };
    let worker = worker::Application::build(&settings).await?;
    let running = Running {
        intake: intake.local_addr(),
        worker: worker.local_addr(),
        simulator,
    };
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
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let partner = settings.partners.first().cloned();
    let (running, mut tasks) = start(settings, &args, shutdown).await?;
    println!("autorenew run");
    println!(
        "  intake     http://{}  (POST /stripeSubAuthorization, /stripeSubDirectly, /resultQuery, /cancelAutoRenewalRecord, /queryAutoRenewalRecord)",
        running.intake
    );
    println!(
        "  worker     http://{}  (probes and metrics)",
        running.worker
    );
    match running.simulator {
        Some(sim) => println!(
            "  stripe-sim http://{sim}  (no stripe.secret_key configured; GET /_sim/stats; POST /_sim/advance moves its clock; its webhooks come to the intake)"
        ),
        None => println!("  stripe     the real Stripe API (stripe.secret_key is set)"),
    }
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
