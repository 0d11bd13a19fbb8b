//! The binary's wiring of the Stripe simulator and loadgen to the service: the only code that
//! sees both sides. A module of the binary (`src/main.rs`), compiled by path into `tests/it` too
//! so the tests start what the binary starts; never a module of the library, which cannot name
//! either crate (docs/design.md, "Crates").

use autorenew::config::Settings;
use autorenew::run::{Simulator, SimulatorWanted};
use stripe_sim::SimSettings;
use stripe_sim::webhooks::EndpointSettings;

/// `autorenew run`'s simulator ([`autorenew::run::StartSimulator`]): the laptop's, on
/// `--sim-listen`, delivering its webhooks to the run's intake.
pub fn start_simulator(wanted: SimulatorWanted) -> anyhow::Result<Simulator> {
    let mut settings = SimSettings {
        listen: wanted.listen,
        ..SimSettings::laptop()
    };
    settings.webhooks.endpoints.push(EndpointSettings {
        url: wanted.webhook_url,
        secret: wanted.webhook_secret,
        enabled_events: wanted.webhook_events,
    });
    let app = stripe_sim::Application::build(settings)?;
    Ok(Simulator {
        address: app.address(),
        serve: Box::pin(app.run_until_stopped(wanted.stop)),
    })
}

/// What `autorenew loadgen` takes from the configuration: the defaults of its flags.
pub fn loadgen_defaults(settings: &Settings) -> loadgen::Defaults {
    loadgen::Defaults {
        partners: settings
            .partners
            .iter()
            .map(|partner| (partner.code.clone(), partner.secret.clone()))
            .collect(),
        intake_listen: settings.intake_listen(),
        amqp_url: settings.amqp.url.clone(),
        amqp_prefix: settings.amqp.prefix.clone(),
        webhook_secret: settings.stripe.webhook_secrets.first().cloned(),
        stripe_api_base: settings.stripe.api_base.clone(),
        push_partners: settings
            .partners
            .iter()
            .filter_map(|partner| {
                let push = partner.push.as_ref()?;
                Some((partner.code.clone(), push.secrets.clone()))
            })
            .collect(),
    }
}
