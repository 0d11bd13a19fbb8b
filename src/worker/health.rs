//! The worker's `/healthz`, `/readyz` and `/metrics`, for probes and autoscaling.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use super::consumer::Worker;
use crate::telemetry;

pub fn router(worker: Arc<Worker>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(worker)
}

/// Ready: connected to RabbitMQ, Redis answers, and a consumer is taking jobs.
async fn readyz(State(worker): State<Arc<Worker>>) -> impl IntoResponse {
    let broker = worker.broker.is_ready();
    let store = worker.store.ping().await;
    let consuming = worker.consuming.load(Ordering::SeqCst);
    let ready = broker && store && consuming;
    let word = |up: bool| if up { "up" } else { "down" };
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(json!({
            "status": if ready { "ready" } else { "not ready" },
            "broker": word(broker),
            "redis": word(store),
            "consuming": consuming,
        })),
    )
}

async fn metrics(State(worker): State<Arc<Worker>>) -> impl IntoResponse {
    telemetry::record_worker_state(
        worker.broker.is_ready(),
        worker.consuming.load(Ordering::SeqCst),
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry::metrics_handle().render(),
    )
}
