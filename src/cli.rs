//! The command line: one binary, one subcommand per job (docs/design.md). A module of the binary,
//! not of the library: `stripe-sim` and `loadgen` take their flags from crates the library cannot
//! name (docs/design.md, "Crates").

use std::path::PathBuf;

use autorenew::dlq::DlqArgs;
use autorenew::events::EventsArgs;
use autorenew::probe::ProbeArgs;
use autorenew::push::ops::PushArgs;
use autorenew::push::receiver::ReceiverArgs;
use autorenew::reconcile::ReconcileArgs;
use autorenew::run::RunArgs;
use autorenew::sign_tool::SignArgs;
use clap::{Parser, Subcommand};
use loadgen::LoadgenArgs;
use stripe_sim::SimArgs;

#[derive(Debug, Parser)]
#[command(
    name = "autorenew",
    version,
    about = "Signed partner requests in, Stripe subscriptions out"
)]
pub struct Cli {
    /// Configuration file (default: ./config.toml when it exists). `AUTORENEW__SECTION__KEY`
    /// environment variables override it.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log one JSON object per line (same as `log.json = true`).
    #[arg(long, global = true)]
    pub log_json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Intake, worker and (with no Stripe key configured) the Stripe simulator in one process.
    Run(RunArgs),
    /// Serve the HTTP intake: check signed requests and put them on RabbitMQ.
    Intake,
    /// Consume jobs: create the Stripe subscriptions and publish the result events.
    Worker,
    /// Push every result event of a partner with a push to its URL, signed, at least once.
    Notifier,
    /// The push's state per partner, and its switch: `push status|enable|test`.
    Push(PushArgs),
    /// A partner's push endpoint for a laptop and tests: verifies, counts, answers as told.
    Receiver(ReceiverArgs),
    /// List the dead letters, replay them into the jobs queue, or drop a poison message.
    Dlq(DlqArgs),
    /// Print the result events as they are published, one JSON object a line, until Ctrl-C.
    Events(EventsArgs),
    /// Feed the Stripe events the intake missed (listed over a window) through its webhook.
    Reconcile(ReconcileArgs),
    /// Run the built-in Stripe simulator (the stand-in for Stripe's API in demos and tests).
    StripeSim(SimArgs),
    /// Print signContent and the sign of a JSON body read from stdin.
    Sign(SignArgs),
    /// Send signed load to an intake, follow every job to its result, report the figures.
    Loadgen(LoadgenArgs),
    /// GET a URL: exit 0 on a 2xx answer, 1 otherwise (container healthchecks without a shell).
    Probe(ProbeArgs),
    /// Once, when upgrading with no intake or worker running: move the Redis keys of payIds
    /// written before payIds were scoped by partner to their scoped names.
    MigrateKeys,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
