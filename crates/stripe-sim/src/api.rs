//! One request to the Stripe API, start to end: auth, the fault stage (scripts, the limiter,
//! random faults), parameter decoding, idempotency, latency, the endpoint under the state
//! lock, and the lost-response fault after the write.
//!
//! The order matters: a 429 or an injected 500 happens before anything runs and saves
//! nothing under the idempotency key; latency is spent while the key is in flight (so a
//! concurrent retry sees Stripe's 409); a saved 500 takes the place of the endpoint after the
//! key was claimed, so it is saved under the key as Stripe saves a 500 of an endpoint that
//! started; a lost response happens after the write was saved.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::Shared;
use super::errors::ApiError;
use super::events::Request;
use super::faults::{self, Answer, LostMode, Plan};
use super::form::Params;
use super::idempotency::{Claim, Saved};
use super::routes::{Ctx, Route};
use super::stats::{DROPPED, Fault};
use super::store::new_id;

pub async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let Some((route, id)) = Route::find(&method, path) else {
        shared.stats_record("unrecognized", StatusCode::NOT_FOUND.as_u16());
        return ApiError::not_found_route(method.as_str(), path).into_response();
    };
    let (response, recorded) = serve(&shared, route, id, &method, &uri, &headers, body).await;
    shared.stats_record(route.template(), recorded);
    response
}

/// The response and the status to count for it (`DROPPED` for a dropped connection).
async fn serve(
    shared: &Arc<Shared>,
    route: Route,
    id: Option<&str>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> (Response, u16) {
    let api_key = match api_key(headers) {
        Ok(key) => key,
        Err(error) => return counted(error.into_response()),
    };
    let (plan, config) = shared.plan(method, uri.path(), route);
    let (latency, lost, saved_error) = match plan {
        Plan::Run { latency, lost } => (latency, lost, false),
        Plan::SavedError { latency } => (latency, None, true),
        Plan::RateLimited { spurious } => {
            shared.stats_fault(if spurious {
                Fault::Spurious429
            } else {
                Fault::RateLimited
            });
            return counted(ApiError::rate_limited().into_response());
        }
        Plan::Hang(duration) => {
            shared.stats_fault(Fault::Hang);
            shared.sleep(duration).await;
            return counted(ApiError::server_error().into_response());
        }
        Plan::Error(answer) => {
            shared.stats_fault(Fault::Error);
            return counted(scripted_error(answer).into_response());
        }
    };
    let raw = if *method == Method::POST {
        &body[..]
    } else {
        uri.query().unwrap_or("").as_bytes()
    };
    let params = match Params::parse(raw) {
        Ok(params) => params,
        Err(error) => return counted(error.into_response()),
    };
    if let Err(error) = publishable_reach(&api_key, route, &params) {
        return counted(error.into_response());
    }
    let key = match idempotency_key(method, headers) {
        Ok(key) => key,
        Err(error) => return counted(error.into_response()),
    };
    if let Some(key) = &key {
        let claim = shared
            .keys()
            .claim(&api_key, key, route.template(), &params);
        match claim {
            Claim::Run => {}
            Claim::Reject(error) => return counted(error.into_response()),
            Claim::Replay(saved) => {
                shared.sleep(latency).await;
                let mut response = respond(&saved);
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return lose(shared, response, lost);
            }
        }
    }
    // The work runs in its own task: if the client gives up (a timeout) the request still
    // completes and saves its answer under the key, as on Stripe, where a write the client
    // stopped waiting for still happens. That is the outcome-unknown case the worker settles.
    let work = Work {
        shared: Arc::clone(shared),
        route,
        id: id.map(str::to_owned),
        params,
        config,
        latency,
        saved_error,
        key: key.map(|key| (api_key, key)),
    };
    match tokio::spawn(work.run()).await {
        Ok(saved) => lose(shared, respond(&saved), lost),
        Err(_) => counted(ApiError::server_error().into_response()),
    }
}

/// One endpoint call with everything it needs owned, so it can outlive its client.
struct Work {
    shared: Arc<Shared>,
    route: Route,
    id: Option<String>,
    params: Params,
    config: faults::FaultConfig,
    latency: std::time::Duration,
    /// The endpoint fails with a 500 instead of running (saved under the key like any answer).
    saved_error: bool,
    /// (API key, idempotency key) when the request claimed one.
    key: Option<(String, String)>,
}

impl Work {
    async fn run(self) -> Saved {
        let Work {
            shared,
            route,
            id,
            params,
            config,
            latency,
            saved_error,
            key,
        } = self;
        shared.sleep(latency).await;
        let request = Request {
            id: Some(new_id("req")),
            idempotency_key: key.as_ref().map(|(_, key)| key.clone()),
        };
        let result = if saved_error {
            // Stripe's endpoint failed after it started: nothing written, nothing to deliver.
            shared.stats_fault(Fault::SavedError);
            Err(ApiError::saved_server_error())
        } else {
            let (result, deliveries) = {
                let mut store = shared.store();
                let mut ctx = Ctx {
                    store: &mut store,
                    config: &config,
                    now: Instant::now(),
                    request,
                };
                let result = route.execute(&mut ctx, id.as_deref(), &params);
                (result, store.events.take_outbox())
            };
            shared.deliver(deliveries);
            result
        };
        let (saved, validation) = match result {
            Ok(value) => (
                Saved {
                    status: StatusCode::OK,
                    body: Bytes::from(serde_json::to_vec(&value).unwrap_or_default()),
                    should_retry: None,
                },
                false,
            ),
            Err(error) => (
                Saved {
                    status: error.status,
                    body: Bytes::from(serde_json::to_vec(&error.body()).unwrap_or_default()),
                    should_retry: error.should_retry,
                },
                error.is_validation(),
            ),
        };
        if let Some((api_key, key)) = &key {
            let mut keys = shared.keys();
            if validation {
                keys.release(api_key, key);
            } else {
                keys.finish(api_key, key, saved.clone());
            }
        }
        saved
    }
}

fn counted(response: Response) -> (Response, u16) {
    let status = response.status().as_u16();
    (response, status)
}

/// Applies the lost-response fault to a successful answer: the write has happened, the
/// client learns nothing (a 500, or the connection drops mid-answer).
fn lose(shared: &Shared, response: Response, lost: Option<LostMode>) -> (Response, u16) {
    let Some(mode) = lost.filter(|_| response.status().is_success()) else {
        return counted(response);
    };
    shared.stats_fault(Fault::LostResponse);
    match mode {
        LostMode::Error => counted(ApiError::server_error().into_response()),
        LostMode::Drop => {
            // A body that fails makes hyper abort the connection: the client sees a
            // transport error and cannot tell whether the write happened.
            let failing = futures_util::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "response dropped by the simulator",
                ))
            });
            let mut response = Response::new(Body::from_stream(failing));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            (response, DROPPED)
        }
    }
}

fn respond(saved: &Saved) -> Response {
    let mut response = Response::new(Body::from(saved.body.clone()));
    *response.status_mut() = saved.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(id) = HeaderValue::from_str(&new_id("req")) {
        headers.insert("request-id", id);
    }
    if let Some(retry) = saved.should_retry {
        headers.insert(
            "stripe-should-retry",
            HeaderValue::from_static(if retry { "true" } else { "false" }),
        );
    }
    response
}

fn scripted_error(answer: Answer) -> ApiError {
    match answer {
        Answer::Error {
            status,
            kind,
            code,
            decline_code,
            message,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let kind = kind.as_deref().unwrap_or(if status.is_server_error() {
                "api_error"
            } else {
                "invalid_request_error"
            });
            let message = message.as_deref().unwrap_or("Scripted error (simulator).");
            let mut error = ApiError::scripted(status, kind, code.as_deref(), message);
            error.decline_code = decline_code.map(String::into_boxed_str);
            error
        }
        _ => ApiError::server_error(),
    }
}

/// `Authorization: Bearer sk_test_…` (or `sk_live_…`, restricted `rk_…` keys, or a publishable
/// `pk_…` key, see [`publishable_reach`]), or HTTP
/// Basic with the key as the user name and any (usually empty) password, as `curl -u
/// sk_test_…:` sends it: Stripe accepts both.
fn api_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "You did not provide an API key. You need to provide your API key in the \
             Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
             YOUR_SECRET_KEY').",
        ));
    };
    let value = value.to_str().unwrap_or_default();
    let basic = value.strip_prefix("Basic ").and_then(basic_user);
    let key = match &basic {
        Some(user) => user.as_str(),
        None => value
            .strip_prefix("Bearer ")
            .map(str::trim)
            .unwrap_or_default(),
    };
    let well_formed = [
        "sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_",
    ]
    .iter()
    .any(|prefix| {
        key.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty())
    });
    if well_formed {
        Ok(key.to_owned())
    } else {
        let shown: String = key.chars().take(8).collect();
        Err(ApiError::unauthorized(&format!(
            "Invalid API Key provided: {shown}***"
        )))
    }
}

/// A publishable key (`pk_…`, what Stripe.js and the mobile SDKs hold) reaches only what a
/// client may do with a SetupIntent it was given: retrieve and confirm it, with its client
/// secret. Everything else wants the secret key, as on Stripe.
fn publishable_reach(api_key: &str, route: Route, params: &Params) -> Result<(), ApiError> {
    if !api_key.starts_with("pk_") {
        return Ok(());
    }
    if !matches!(
        route,
        Route::RetrieveSetupIntent | Route::ConfirmSetupIntent
    ) {
        return Err(ApiError::unauthorized(
            "This API call cannot be made with a publishable API key. Please use a secret API              key.",
        ));
    }
    if params.str("client_secret").is_none() {
        return Err(ApiError::missing_param("client_secret"));
    }
    Ok(())
}

/// The user name of HTTP Basic credentials (`base64(user:password)`).
fn basic_user(encoded: &str) -> Option<String> {
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, _password) = decoded.split_once(':').unwrap_or((&decoded, ""));
    Some(user.to_owned())
}

/// Stripe honours `Idempotency-Key` on POST only (GET and DELETE are idempotent already).
fn idempotency_key(method: &Method, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if *method != Method::POST {
        return Ok(None);
    }
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key.to_owned())),
        _ => Err(ApiError::invalid_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters.",
            None,
        )),
    }
}

impl Shared {
    /// This request's fate: a scripted answer if one is queued for its route, else the
    /// limiter, else the random faults. Scripted requests skip the limiter so that a test's
    /// script plays exactly as written.
    fn plan(&self, method: &Method, path: &str, route: Route) -> (Plan, faults::FaultConfig) {
        let mut state = self.faults();
        let config = state.config;
        let concrete = format!("{method} {path}");
        if let Some(answer) = state.scripts.next(&concrete, route.template()) {
            drop(state);
            self.stats_fault(Fault::Scripted);
            return (faults::from_script(answer, &config), config);
        }
        if !state.limiter.take(&config, Instant::now()) {
            return (Plan::RateLimited { spurious: false }, config);
        }
        drop(state);
        (faults::roll(&config), config)
    }
}
