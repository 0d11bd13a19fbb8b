//! The notifier's `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use super::Notifier;
use crate::telemetry;

pub fn router(notifier: Arc<Notifier>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(notifier)
}

/// Ready: connected to RabbitMQ and Redis answers. `consuming` lists the partners whose lane
/// has a consumer now (a paused or disabled partner has none, and that is not unready).
async fn readyz(State(notifier): State<Arc<Notifier>>) -> impl IntoResponse {
    let broker = notifier.broker.is_ready();
    let store = notifier.store.ping().await;
    let ready = broker && store;
    let consuming: Vec<&str> = notifier
        .lanes
        .iter()
        .filter(|lane| lane.consuming.load(Ordering::SeqCst))
        .map(|lane| lane.partner.as_str())
        .collect();
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

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry::metrics_handle().render(),
    )
}
