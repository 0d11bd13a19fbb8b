//! The HTTP side of one push attempt: a pooled hyper client (TLS by hyper-tls) whose resolver
//! refuses loopback, private and link-local addresses unless the configuration allows them,
//! so a name cannot be pointed at an internal service between start-up and an attempt.
//! Redirects are never followed (hyper does not).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;

use crate::config::{PushSettings, is_public};
use crate::domain::push::{self, PushSecret};
use crate::http_client::{self, HttpsClient};

pub const USER_AGENT_VALUE: &str = concat!("autorenew/", env!("CARGO_PKG_VERSION"));
/// How much of an answer's body is read (so its connection can be reused); the rest is dropped.
const BODY_LIMIT: usize = 64 * 1024;
const MAX_IDLE_PER_HOST: usize = 64;

/// A name that resolved only to addresses a push may not reach.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to loopback, private or link-local addresses")]
pub struct Blocked(String);

/// Resolves with the system's resolver, then drops what a push may not reach.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| allow_private || is_public(addr.ip()))
                .collect();
            if found.is_empty() {
                return Err(std::io::Error::other(Blocked(host)));
            }
            Ok(found.into_iter())
        })
    }
}

/// Resolves `host` now and says whether a push may reach it (start-up's check).
pub async fn check_host(host: &str, allow_private: bool) -> Result<(), String> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return if allow_private || is_public(ip) {
            Ok(())
        } else {
            Err(Blocked(host.to_owned()).to_string())
        };
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .collect();
    if addrs.iter().any(|a| !(allow_private || is_public(a.ip()))) {
        return Err(Blocked(host.to_owned()).to_string());
    }
    Ok(())
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    /// The answer's status, if one came within the timeout.
    pub status: Option<u16>,
    /// Why no answer came: `timeout`, `connect`, `tls`, `blocked`, `other`.
    pub error: Option<&'static str>,
    /// A 429 or 503's `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
    pub duration: Duration,
}

impl Attempted {
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// The attempts metric's label.
    pub fn outcome(&self) -> &'static str {
        match (self.status, self.error) {
            (Some(200..=299), _) => "delivered",
            (Some(410), _) => "gone",
            (Some(300..=399), _) => "http_3xx",
            (Some(400..=499), _) => "http_4xx",
            (Some(_), _) => "http_5xx",
            (None, Some(error)) => error,
            (None, None) => "other",
        }
    }
}

/// The client every push of a notifier goes through.
#[derive(Clone)]
pub struct PushClient {
    client: HttpsClient<GuardedResolver>,
    timeout: Duration,
    allow_private: bool,
}

impl PushClient {
    pub fn new(settings: &PushSettings) -> anyhow::Result<Self> {
        let resolver = GuardedResolver {
            allow_private: settings.allow_private_networks,
        };
        let client = http_client::build(
            HttpConnector::new_with_resolver(resolver),
            &http_client::ClientOptions {
                connect_timeout: settings.connect_timeout(),
                idle_timeout: Duration::from_secs(60),
                max_idle_per_host: MAX_IDLE_PER_HOST,
                // Partners' receivers are asked in HTTP/1.1, as Standard Webhooks expects.
                offer_http2: false,
                http2_only: false,
            },
        )?;
        Ok(PushClient {
            client,
            timeout: settings.timeout(),
            allow_private: settings.allow_private_networks,
        })
    }

    /// POSTs `body` to `url`, signed now with `secrets` under `webhook_id`.
    pub async fn send(
        &self,
        url: &str,
        webhook_id: &str,
        secrets: &[PushSecret],
        body: &Bytes,
    ) -> Attempted {
        let started = Instant::now();
        let done = |status, error, retry_after| Attempted {
            status,
            error,
            retry_after,
            duration: started.elapsed(),
        };
        let Ok(uri) = url.parse::<Uri>() else {
            return done(None, Some("other"), None);
        };
        // An address literal never goes through the resolver.
        if let Some(host) = uri.host()
            && let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>()
            && !(self.allow_private || is_public(ip))
        {
            return done(None, Some("blocked"), None);
        }
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = push::signature(secrets, webhook_id, timestamp, body);
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(push::ID_HEADER, webhook_id)
            .header(push::TIMESTAMP_HEADER, timestamp.to_string())
            .header(push::SIGNATURE_HEADER, signature)
            .body(Full::new(body.clone()));
        let Ok(request) = request else {
            return done(None, Some("other"), None);
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => return done(None, Some("timeout"), None),
            Ok(Err(error)) => return done(None, Some(classify(&error)), None),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        let retry_after = if matches!(status, 429 | 503) {
            response.headers().get(RETRY_AFTER).and_then(retry_after)
        } else {
            None
        };
        // The status decides; the body is read only so the connection can serve again.
        let _ = tokio::time::timeout_at(
            deadline,
            Limited::new(response.into_body(), BODY_LIMIT).collect(),
        )
        .await;
        done(Some(status), None, retry_after)
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc2822).ok()?;
    let secs = (at - time::OffsetDateTime::now_utc()).whole_seconds();
    Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// The kind of failure, from the error's chain.
fn classify(error: &hyper_util::client::legacy::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.is::<Blocked>() {
            return "blocked";
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<Blocked>())
        {
            return "blocked";
        }
        if cause.is::<native_tls::Error>() {
            return "tls";
        }
        source = cause.source();
    }
    if error.is_connect() {
        "connect"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(allow_private: bool) -> PushSettings {
        PushSettings {
            allow_private_networks: allow_private,
            timeout_secs: 2.0,
            connect_timeout_secs: 1.0,
            ..PushSettings::default()
        }
    }

    #[tokio::test]
    async fn private_addresses_are_refused_unless_allowed() {
        assert!(check_host("127.0.0.1", false).await.is_err());
        assert!(check_host("[::1]", false).await.is_err());
        assert!(check_host("localhost", false).await.is_err());
        assert!(check_host("127.0.0.1", true).await.is_ok());

        let guarded = PushClient::new(&settings(false)).expect("client");
        let body = Bytes::from_static(b"{}");
        for url in [
            "http://127.0.0.1:9/hook",
            "http://localhost:9/hook",
            "http://[::1]:9/hook",
        ] {
            let attempted = guarded.send(url, "msg_1", &[], &body).await;
            assert_eq!(attempted.error, Some("blocked"), "{url}");
            assert_eq!(attempted.status, None);
        }
        // Allowed, the same address is tried: nothing listens on port 9.
        let open = PushClient::new(&settings(true)).expect("client");
        let attempted = open
            .send("http://127.0.0.1:9/hook", "msg_1", &[], &body)
            .await;
        assert_eq!(attempted.error, Some("connect"));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let value = |s: &str| HeaderValue::from_str(s).expect("value");
        assert_eq!(retry_after(&value("120")), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after(&value("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&value("soon")), None);
    }
}
