//! `/_sim/*`: the simulator's own admin endpoints (JSON in and out, no auth, never faulted).
//! The formats are documented in the module docs of [`crate`].

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::billing;
use super::faults::{Answer, FaultConfig, Limiter, STRIPE_LIVE_RATE, STRIPE_TEST_RATE};
use super::routes::Route;
use super::store::Store;

pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/reset", post(reset))
        .route(
            "/_sim/config",
            get(config).post(replace_config).patch(patch_config),
        )
        .route(
            "/_sim/script",
            get(scripts).post(add_script).delete(clear_scripts),
        )
        .route("/_sim/advance", post(advance))
        .route("/_sim/clock", get(clock))
}

fn bad(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": message.into()})),
    )
        .into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let mut body = shared.stats().to_json();
    {
        let store = shared.store();
        body["objects"] = store.counts();
        body["subscriptions_by_pay_id"] = json!(store.subscriptions_by_pay_id);
    }
    let keys = shared.keys();
    body["idempotency"] =
        json!({"keys": keys.count(), "in_flight": keys.in_flight(), "replays": keys.replays});
    axum::Json(body).into_response()
}

/// Empties objects, idempotency keys, stats, scripts and the limiter's bucket; the
/// configuration stays.
async fn reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.reset();
    axum::Json(json!({"reset": true})).into_response()
}

/// `POST /_sim/advance` with `seconds=N` (form or query) or `{"seconds": N}`: moves the
/// clock and does what fell due (see [`billing`]), then delivers the webhooks it caused and
/// answers once the first attempt of each has its answer (within the delivery timeout), so a
/// caller's next step sees them taken. `wait=false` answers at once.
async fn advance(State(shared): State<Arc<Shared>>, uri: axum::http::Uri, body: Bytes) -> Response {
    let query = uri.query().unwrap_or("");
    let seconds = match seconds(query, &body) {
        Ok(seconds) => seconds,
        Err(message) => return bad(message),
    };
    let wait = match wait(query, &body) {
        Ok(wait) => wait,
        Err(message) => return bad(message),
    };
    let shape = shared.faults().config.invoice_shape;
    let (report, deliveries) = {
        let mut store = shared.store();
        let report = billing::advance(&mut store, seconds, shape);
        (report, store.events.take_outbox())
    };
    let mut body = json!(report);
    if wait {
        let limit = shared.courier.timeout();
        let webhooks = shared.deliver_and_wait(deliveries, limit).await;
        body["webhooks"] = json!(webhooks);
    } else {
        shared.deliver(deliveries);
    }
    axum::Json(body).into_response()
}

/// A field of the advance, from its JSON body, its form body or its query.
fn field(query: &str, body: &[u8], name: &str) -> Option<Value> {
    let from_json = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get(name).cloned());
    let from_form = || {
        form_urlencoded::parse(body)
            .chain(form_urlencoded::parse(query.as_bytes()))
            .find(|(k, _)| k == name)
            .map(|(_, v)| json!(v))
    };
    from_json.or_else(from_form)
}

fn seconds(query: &str, body: &[u8]) -> Result<i64, String> {
    let value = field(query, body, "seconds")
        .ok_or("give seconds=N (form or query) or {\"seconds\": N}")?;
    let seconds = match &value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    seconds
        .filter(|s| *s >= 0)
        .ok_or_else(|| format!("seconds must be a whole number of seconds, 0 or more, got {value}"))
}

/// `wait`: true unless given as false.
fn wait(query: &str, body: &[u8]) -> Result<bool, String> {
    match field(query, body, "wait") {
        None => Ok(true),
        Some(Value::Bool(wait)) => Ok(wait),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(other) => Err(format!("wait must be true or false, got {other}")),
    }
}

/// `GET /_sim/clock`: the simulator's time and how far it runs ahead of the wall clock.
async fn clock(State(shared): State<Arc<Shared>>) -> Response {
    let store = shared.store();
    axum::Json(json!({"now": store.now(), "offset_seconds": store.clock_offset})).into_response()
}

async fn config(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.faults().config).into_response()
}

/// `POST`: the given fields on top of the defaults.
async fn replace_config(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    change_config(&shared, body, FaultConfig::default())
}

/// `PATCH`: the given fields on top of the current configuration.
async fn patch_config(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let current = shared.faults().config;
    change_config(&shared, body, current)
}

fn change_config(shared: &Shared, body: Bytes, base: FaultConfig) -> Response {
    match merged(&body, base) {
        Ok(config) => {
            shared.faults().config = config;
            axum::Json(config).into_response()
        }
        Err(message) => bad(message),
    }
}

/// `base` with the JSON object's fields laid over it. `"rate_limit"` is a shorthand for
/// `rate_limit_per_second`: `"test"` (25/s), `"live"` (100/s), `"off"`, or a number.
fn merged(body: &[u8], base: FaultConfig) -> Result<FaultConfig, String> {
    let patch: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut patch) = patch else {
        return Err("the configuration must be a JSON object".into());
    };
    if let Some(shorthand) = patch.remove("rate_limit") {
        let rate = match &shorthand {
            Value::String(s) => parse_rate(s)?,
            Value::Number(n) => n.as_f64().unwrap_or(-1.0),
            Value::Null => 0.0,
            _ => return Err("rate_limit must be \"test\", \"live\", \"off\" or a number".into()),
        };
        patch.insert("rate_limit_per_second".into(), json!(rate));
    }
    let mut merged = serde_json::to_value(base).map_err(|e| e.to_string())?;
    if let Value::Object(fields) = &mut merged {
        fields.extend(patch);
    }
    let config: FaultConfig = serde_json::from_value(merged).map_err(|e| e.to_string())?;
    config.check()?;
    Ok(config)
}

/// `off`, `test` (Stripe's 25/s), `live` (100/s), or a number of requests per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s {
        "off" | "none" | "0" => Ok(0.0),
        "test" => Ok(STRIPE_TEST_RATE),
        "live" => Ok(STRIPE_LIVE_RATE),
        n => n
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite() && *r >= 0.0)
            .ok_or_else(|| format!("rate limit must be off, test, live or a number, got {n}")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptEntry {
    route: String,
    answers: Vec<Answer>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScriptBody {
    One(ScriptEntry),
    Many(Vec<ScriptEntry>),
}

async fn scripts(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!(shared.faults().scripts.pending())).into_response()
}

/// Queues answers behind those already queued for the same route.
async fn add_script(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let entries = match serde_json::from_slice::<ScriptBody>(&body) {
        Ok(ScriptBody::One(entry)) => vec![entry],
        Ok(ScriptBody::Many(entries)) => entries,
        Err(e) => {
            return bad(format!(
                "expected {{\"route\": \"POST /v1/subscriptions\", \"answers\": [...]}} or a \
                 list of them: {e}"
            ));
        }
    };
    for entry in &entries {
        if let Err(message) = check_route(&entry.route) {
            return bad(message);
        }
    }
    let mut faults = shared.faults();
    for entry in entries {
        faults.scripts.push(entry.route, entry.answers);
    }
    axum::Json(json!(faults.scripts.pending())).into_response()
}

async fn clear_scripts(State(shared): State<Arc<Shared>>) -> Response {
    shared.faults().scripts.clear();
    axum::Json(json!({})).into_response()
}

/// A script's route must be `*` or name an endpoint the simulator serves, so a typo fails
/// loudly instead of never matching.
fn check_route(route: &str) -> Result<(), String> {
    if route == "*" {
        return Ok(());
    }
    let known = route
        .split_once(' ')
        .and_then(|(method, path)| {
            let method = method.parse::<axum::http::Method>().ok()?;
            Route::find(&method, path)
        })
        .is_some();
    if known {
        Ok(())
    } else {
        Err(format!(
            "unknown route {route:?}: use \"*\" or \"METHOD /v1/path\" of an endpoint the \
             simulator serves, e.g. \"POST /v1/subscriptions\" or \"GET /v1/customers/{{id}}\""
        ))
    }
}

impl Shared {
    fn reset(&self) {
        *self.store() = Store {
            webhook_endpoints: self.configured_endpoints.clone(),
            ..Store::default()
        };
        *self.keys() = Default::default();
        *self.stats() = Default::default();
        let mut faults = self.faults();
        faults.scripts.clear();
        faults.limiter = Limiter::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_changes_only_the_fields_it_names() {
        let base = FaultConfig {
            error_rate: 0.5,
            ..FaultConfig::default()
        };
        let config = merged(
            br#"{"rate_limit": "test", "latency_p50_ms": 5, "latency_p99_ms": 9}"#,
            base,
        )
        .expect("valid");
        assert_eq!(config.rate_limit_per_second, STRIPE_TEST_RATE);
        assert_eq!(config.error_rate, 0.5);
        assert_eq!(config.latency_p99_ms, 9);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(merged(br#"{"eror_rate": 0.1}"#, FaultConfig::default()).is_err());
        assert!(merged(br#"{"error_rate": 2}"#, FaultConfig::default()).is_err());
        assert!(merged(br#"{"rate_limit": "fast"}"#, FaultConfig::default()).is_err());
    }

    #[test]
    fn script_routes_must_name_a_served_endpoint() {
        assert!(check_route("POST /v1/subscriptions").is_ok());
        assert!(check_route("GET /v1/customers/{id}").is_ok());
        assert!(check_route("GET /v1/customers/cus_123").is_ok());
        assert!(check_route("*").is_ok());
        assert!(check_route("POST /v1/subscription").is_err());
        assert!(check_route("/v1/customers").is_err());
    }
}
