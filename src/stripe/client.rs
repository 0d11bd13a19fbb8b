//! The HTTP client under every Stripe call: async-stripe's request and error types, sent over
//! a pooled hyper client of our own.
//!
//! async-stripe's bundled client keeps no idle connections and speaks only HTTP/1.1, so every
//! call opens a connection of its own: at 2,000 calls in flight a worker held 2,000 of them,
//! each with its buffers, its dispatch channel and its task (about 34 KB apiece, measured with
//! heaptrack; `scripts/bench.sh latency`). This one keeps connections alive between calls and
//! speaks HTTP/2 where the server does, so the calls in flight share one connection: over TLS
//! (Stripe's own API) when ALPN settles on it, and over plain HTTP when the configuration says
//! the server speaks it without asking (`stripe.http2_prior_knowledge`; the built-in simulator
//! does). Everything a call sends is what async-stripe's client sends; everything it gets back
//! is parsed by async-stripe's own types, as before.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::GaiResolver;
use secrecy::{ExposeSecret, SecretString};
use stripe::StripeError;
use stripe_client_core::{
    CustomizedStripeRequest, Outcome, RequestStrategy, StripeClient, StripeClientErr, StripeMethod,
};

use crate::http_client::{self, HttpsClient};

/// Stripe's own API, when `stripe.api_base` is empty.
const STRIPE_API_BASE: &str = "https://api.stripe.com";
const USER_AGENT_VALUE: &str = concat!("Stripe/v1 autorenew/", env!("CARGO_PKG_VERSION"));
const STRIPE_VERSION: HeaderName = HeaderName::from_static("stripe-version");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const SHOULD_RETRY: HeaderName = HeaderName::from_static("stripe-should-retry");
/// Set on an answer Stripe replayed from an idempotency key's record rather than executed.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const STRIPE_ACCOUNT: HeaderName = HeaderName::from_static("stripe-account");
/// Idle HTTP/1.1 connections kept per host. Over HTTP/2 there is one connection anyway; over
/// HTTP/1.1 a burst's extra connections are closed once it is over rather than kept.
const MAX_IDLE_PER_HOST: usize = 256;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A failed call: async-stripe's error, and what Stripe's headers said of it, which
/// async-stripe's error type has no room for.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CallError {
    pub error: StripeError,
    /// Stripe's own advice on retrying it (`Stripe-Should-Retry`).
    pub should_retry: Option<bool>,
    /// The answer was replayed from the idempotency key's record (`Idempotent-Replayed: true`):
    /// the first request under the key ran to its end, and this is how it ended. An answer
    /// that was executed now, or no answer at all, is false.
    pub replayed: bool,
}

impl From<StripeError> for CallError {
    fn from(error: StripeError) -> Self {
        CallError {
            error,
            should_retry: None,
            replayed: false,
        }
    }
}

/// What one attempt got back: the status, Stripe's retry advice, whether the answer was
/// replayed, and the body.
struct Answer {
    status: StatusCode,
    should_retry: Option<bool>,
    replayed: bool,
    body: Bytes,
}

impl Answer {
    fn into_error(self) -> CallError {
        CallError {
            error: stripe_error(self.status, &self.body),
            should_retry: self.should_retry,
            replayed: self.replayed,
        }
    }
}

impl StripeClientErr for CallError {
    fn deserialize_err(msg: impl std::fmt::Display) -> Self {
        StripeError::deserialize_err(msg).into()
    }
}

/// How a [`StripeHttp`] reaches Stripe.
#[derive(Debug, Clone)]
pub struct ClientOptions<'a> {
    pub secret_key: &'a SecretString,
    /// Empty: Stripe's own API. With or without a trailing slash.
    pub api_base: &'a str,
    /// Per attempt; the caller's retry policy decides what happens after one times out.
    pub timeout: Duration,
    /// Speak HTTP/2 to a plain `http://` base without negotiating it first.
    pub http2_prior_knowledge: bool,
}

/// A Stripe client: cheap to clone, all clones share one connection pool.
#[derive(Clone)]
pub struct StripeHttp {
    client: HttpsClient<GaiResolver>,
    /// `https://api.stripe.com/v1`, or the configured base with `/v1`.
    base: String,
    authorization: HeaderValue,
    stripe_version: HeaderValue,
    timeout: Duration,
}

impl std::fmt::Debug for StripeHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The authorization header carries the secret key: never print it.
        f.debug_struct("StripeHttp")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl StripeHttp {
    pub fn new(options: &ClientOptions<'_>) -> Result<Self, StripeError> {
        let base = options.api_base.trim().trim_end_matches('/');
        let base = if base.is_empty() {
            STRIPE_API_BASE
        } else {
            base
        };
        let mut authorization =
            HeaderValue::try_from(format!("Bearer {}", options.secret_key.expose_secret()))
                .map_err(|_| {
                    StripeError::ConfigError(
                        "stripe.secret_key may hold only visible ASCII characters".into(),
                    )
                })?;
        authorization.set_sensitive(true);
        let stripe_version = HeaderValue::from_str(stripe_client_core::VERSION.as_str())
            .map_err(|_| StripeError::ConfigError("async-stripe's API version".into()))?;

        let client = http_client::build(
            HttpConnector::new(),
            &http_client::ClientOptions {
                connect_timeout: options.timeout,
                idle_timeout: IDLE_TIMEOUT,
                max_idle_per_host: MAX_IDLE_PER_HOST,
                offer_http2: true,
                http2_only: options.http2_prior_knowledge && base.starts_with("http://"),
            },
        )
        .map_err(|e| StripeError::ConfigError(format!("TLS: {e}")))?;
        Ok(StripeHttp {
            client,
            base: format!("{base}/v1"),
            authorization,
            stripe_version,
            timeout: options.timeout,
        })
    }

    fn request(
        &self,
        method: StripeMethod,
        path: &str,
        query: Option<&str>,
        body: Option<String>,
        key: Option<&str>,
        account: Option<&str>,
    ) -> Result<Request<Full<Bytes>>, StripeError> {
        let mut uri = format!("{}{path}", self.base);
        if let Some(query) = query {
            uri.push('?');
            uri.push_str(query);
        }
        let method = match method {
            StripeMethod::Get => Method::GET,
            StripeMethod::Post => Method::POST,
            StripeMethod::Delete => Method::DELETE,
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
            .header(STRIPE_VERSION, self.stripe_version.clone());
        if let Some(key) = key {
            builder = builder.header(IDEMPOTENCY_KEY, key);
        }
        if let Some(account) = account {
            builder = builder.header(STRIPE_ACCOUNT, account);
        }
        if body.is_some() {
            builder = builder.header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        builder
            .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
            .map_err(|e| StripeError::ClientError(e.to_string()))
    }

    /// One attempt, and what came back.
    async fn attempt(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, StripeError> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| StripeError::ClientError(e.to_string()))?;
            let status = response.status();
            let should_retry = response
                .headers()
                .get(SHOULD_RETRY)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok());
            let replayed = response
                .headers()
                .get(IDEMPOTENT_REPLAYED)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"));
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| StripeError::ClientError(e.to_string()))?
                .to_bytes();
            Ok(Answer {
                status,
                should_retry,
                replayed,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(StripeError::Timeout))
    }
}

impl StripeHttp {
    /// One GET whose body comes back as Stripe sent it, unparsed: `reconcile` feeds each listed
    /// event's JSON on to the intake, so it needs the bytes rather than async-stripe's types.
    pub async fn get_raw(&self, path: &str, query: &str) -> Result<Bytes, CallError> {
        let request = self.request(StripeMethod::Get, path, Some(query), None, None, None)?;
        let answer = self.attempt(request, self.timeout).await?;
        if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(answer.into_error())
        }
    }
}

impl StripeClient for StripeHttp {
    type Err = CallError;

    /// Sends the request as its strategy says (the worker's are all one attempt, with or without
    /// an idempotency key: its own retry policy decides the rest), and returns the body of a
    /// success or the error Stripe answered.
    async fn execute(&self, request: CustomizedStripeRequest) -> Result<Bytes, CallError> {
        let (request, overrides) = request.into_pieces();
        let strategy = overrides.request_strategy.unwrap_or(RequestStrategy::Once);
        let key = strategy.get_key();
        let prepared = self.request(
            request.method,
            &request.path,
            request.query.as_deref(),
            request.body,
            key.as_ref().map(|key| key.as_str()),
            overrides
                .account_id
                .as_ref()
                .map(|account| account.as_str()),
        )?;
        let timeout = overrides.timeout.unwrap_or(self.timeout);

        let mut tries = 0;
        let mut last: Option<(StatusCode, Option<bool>)> = None;
        let mut last_error =
            CallError::from(StripeError::ClientError("no attempt was made".into()));
        loop {
            let status = last.map(|(status, _)| status.as_u16());
            let should_retry = last.and_then(|(_, advice)| advice);
            match strategy.test(status, should_retry, tries) {
                Outcome::Stop => return Err(last_error),
                Outcome::Continue(Some(pause)) => tokio::time::sleep(pause).await,
                Outcome::Continue(None) => {}
            }
            tries += 1;
            match self.attempt(prepared.clone(), timeout).await {
                Err(error) => last_error = error.into(),
                Ok(answer) if answer.status.is_success() => return Ok(answer.body),
                Ok(answer) => {
                    last = Some((answer.status, answer.should_retry));
                    last_error = answer.into_error();
                }
            }
        }
    }
}

/// The error a non-2xx answer carries, read with async-stripe's own type.
fn stripe_error(status: StatusCode, body: &[u8]) -> StripeError {
    std::str::from_utf8(body)
        .ok()
        .and_then(|text| miniserde::json::from_str::<stripe_shared::Error>(text).ok())
        .map_or_else(
            || StripeError::JSONDeserialize("error deserializing Stripe error".into()),
            |error| StripeError::Stripe(error.error, status.as_u16()),
        )
}
