//! Request metrics: one counter by route and answer code, one histogram of enqueue latency.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

use crate::telemetry::names::intake::{REQUEST_SECONDS, REQUESTS_TOTAL};

/// The `errorCode` an answer carried, left on the response by the error mapping.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Counts every answer by route, HTTP status and code (`S`, or the `errorCode`).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let code = response
        .extensions()
        .get::<ErrorCode>()
        .map(|code| code.0)
        .unwrap_or("S");
    let status = response.status().as_u16().to_string();
    metrics::counter!(REQUESTS_TOTAL, "route" => route.clone(), "status" => status, "code" => code)
        .increment(1);
    metrics::histogram!(REQUEST_SECONDS, "route" => route).record(started.elapsed().as_secs_f64());
    response
}
