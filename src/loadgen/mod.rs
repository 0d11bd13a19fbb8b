//! `autorenew loadgen`: signed load against a running intake. Being built.

use tokio_util::sync::CancellationToken;

/// Flags of `autorenew loadgen`.
#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    /// The intake's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
}

pub async fn run(
    _settings: crate::config::Settings,
    _args: LoadgenArgs,
    _shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::bail!("loadgen is not built yet")
}
