//! `autorenew stripe-sim`: a stateful Stripe stand-in (CONTRACT §8). Being built.

use tokio_util::sync::CancellationToken;

/// Flags of `autorenew stripe-sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:12111")]
    pub listen: String,
}

pub async fn run(_args: SimArgs, _shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not built yet")
}
