//! Serving the intake's router over HTTP/1.1 with the limits `axum::serve` does not set: a
//! deadline for a client's request headers (a client that trickles its headers, "slowloris",
//! or connects and sends nothing, is dropped) and a cap on the size of the header section.
//! The body has its own deadline in the `SignedRequest` extractor (408 `REQUEST_TIMEOUT`).
//! At most `max_connections` are served at once: each is a task, and a flood of them would
//! otherwise grow without bound; beyond it, new connections wait in the listen backlog.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::accept::next_connection;

/// Largest request head (request line and headers); a larger one is answered `431 Request
/// Header Fields Too Large` by hyper. Partners send a handful of short headers. (hyper's
/// `max_buf_size` alone is not a precise cap: a read may overshoot it.)
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in one request; more are answered 431 as well (hyper's own default, made
/// explicit here so it is visible next to the other limits).
const MAX_HEADERS: usize = 100;

/// Accepts connections on `listener` and serves `router` on each until `shutdown`; then stops
/// accepting, lets the requests in hand finish (with their answers), and closes idle
/// connections. The caller keeps the broker connection open until this returns.
///
/// Every connection must deliver each request's head within `header_timeout`, counted from the
/// moment the server starts waiting for it (so an idle keep-alive connection is closed after
/// that long too).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections));

    loop {
        // A free slot first, then accept: while all are taken, clients wait in the backlog.
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let Some(stream) = next_connection(&listener, &shutdown).await else {
            break;
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that times out, resets or sends garbage ends only its own connection.
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
        });
    }

    drop(listener);
    graceful.shutdown().await;
}
