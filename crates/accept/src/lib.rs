//! Accepting connections until shutdown, for the servers that run their own hyper connections
//! (the intake and the simulator); and the one message every server gives when it cannot bind.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why a server could not bind `address`, in words an operator can act on: the address, the
/// setting that chose it, and how to choose another (`change`). A second worker or intake on
/// one host meets this first.
pub fn bind_failed(
    error: &std::io::Error,
    address: std::net::SocketAddr,
    setting: &str,
    change: &str,
) -> anyhow::Error {
    let advice = if error.kind() == std::io::ErrorKind::AddrInUse {
        format!(
            "; another process (a second one on this host?) listens there: give this one another \
             address, {change}"
        )
    } else {
        String::new()
    };
    anyhow::anyhow!("cannot listen on {address} (`{setting}`): {error}{advice}")
}

/// The next connection, or None once `shutdown` is cancelled.
pub async fn next_connection(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<TcpStream> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => return Some(stream),
                Err(error) => {
                    // Per-connection failures (a reset before accept) and resource exhaustion
                    // alike: neither stops the server, and a short pause lets resources free up.
                    tracing::warn!(%error, "accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }
}
