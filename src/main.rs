//! `autorenew`: parses the command line and calls the service library, the Stripe simulator or
//! loadgen. The only crate that links all three (docs/design.md, "Crates").

mod cli;
mod wiring;

use std::process::ExitCode;

use clap::Parser;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use autorenew::config::Settings;
use autorenew::{
    dlq, events, intake, probe, push, reconcile, run as run_all, sign_tool, telemetry, worker,
};
use cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("autorenew: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let load = || -> anyhow::Result<Settings> {
        let mut settings = Settings::load(cli.config.as_deref())?;
        settings.log.json |= cli.log_json;
        telemetry::init_logging(&settings.log);
        for deprecated in settings.deprecations() {
            tracing::warn!("{deprecated}");
        }
        telemetry::configure_metrics(&settings);
        Ok(settings)
    };
    match cli.command {
        Command::Sign(args) => sign_tool::run(args),
        // No configuration and no logging: a healthcheck's only output is its exit code.
        Command::Probe(args) => {
            probe::run(&args).await?;
            Ok(())
        }
        Command::StripeSim(args) => {
            let log = autorenew::config::LogSettings {
                json: cli.log_json,
                ..Default::default()
            };
            telemetry::init_logging(&log);
            stripe_sim::run(args, shutdown_on_signal()).await
        }
        Command::Loadgen(args) => {
            let settings = load()?;
            let defaults = wiring::loadgen_defaults(&settings);
            loadgen::run(defaults, args, shutdown_on_signal()).await
        }
        Command::Run(args) => {
            let settings = load()?;
            require_partners(&settings)?;
            run_all::run(
                settings,
                args,
                wiring::start_simulator,
                shutdown_on_signal(),
            )
            .await
        }
        Command::Worker => {
            let settings = load()?;
            worker::run(settings, shutdown_on_signal()).await
        }
        Command::Notifier => {
            let settings = load()?;
            push::run(settings, shutdown_on_signal()).await
        }
        Command::Push(args) => {
            let settings = load()?;
            push::ops::run(settings, args).await
        }
        Command::Receiver(args) => {
            let settings = load()?;
            push::receiver::run(settings, args, shutdown_on_signal()).await
        }
        Command::Dlq(args) => {
            let settings = load()?;
            dlq::run(settings, args, CancellationToken::new()).await
        }
        Command::Events(args) => {
            let settings = load()?;
            events::run(settings, args, shutdown_on_signal()).await
        }
        Command::Reconcile(args) => {
            let settings = load()?;
            reconcile::run(settings, args).await
        }
        Command::Intake => {
            let settings = load()?;
            require_partners(&settings)?;
            intake::run(settings, shutdown_on_signal()).await
        }
        Command::MigrateKeys => {
            let settings = load()?;
            let store = autorenew::store::Store::new(&settings.redis)?;
            // The nodes of `redis.url`: one Redis, or every master of a cluster.
            let nodes: Vec<String> = settings
                .redis
                .url
                .expose_secret()
                .split(',')
                .map(|node| node.trim().to_owned())
                .filter(|node| !node.is_empty())
                .collect();
            let migrated = store.migrate_keys(&nodes).await?;
            println!(
                "moved the keys of {} payIds ({} keys); {} legacy payIds named no partner and were left to expire",
                migrated.pay_ids, migrated.keys, migrated.orphans
            );
            Ok(())
        }
    }
}

/// An intake without partners would refuse every request: most likely the configuration file
/// is missing (a container started without its mount), so say so instead of serving.
fn require_partners(settings: &Settings) -> anyhow::Result<()> {
    if settings.partners.is_empty() {
        anyhow::bail!(
            "no partner is configured: give a configuration file with [[partners]] \
             (--config PATH, e.g. a mounted /etc/autorenew/config.toml; ./config.toml is read \
             when it exists)"
        );
    }
    Ok(())
}

/// A token cancelled on SIGINT or SIGTERM: every server and loop takes it and stops cleanly.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        telemetry::wait_for_signal().await;
        cancel.cancel();
    });
    token
}
