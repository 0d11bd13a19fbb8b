//! The HTTP side: one pooled client POSTing prepared bodies to `/stripeSubDirectly`, and the
//! answer read the way a partner reads it (status, `operateCode`, `errorCode`).
//!
//! hyper's own pooled client rather than reqwest: loadgen shares the machine with what it
//! measures, and reqwest's layers (URL, redirect and timeout handling per request) took CPU the
//! intake then lacked: in alternating runs on this machine the intake's accepted/s rose 5–20 %
//! with this client.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;

use super::drive;
use super::payload::Prepared;
use super::report::Answer;

/// The endpoint loadgen drives.
pub const SUBSCRIBE_PATH: &str = "/stripeSubDirectly";

/// A pooled HTTP/1 client bound to one intake.
pub struct HttpSender {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    timeout: Duration,
}

/// The flat answer fields loadgen looks at.
#[derive(Debug, Deserialize)]
struct Flat {
    #[serde(rename = "operateCode", default)]
    operate_code: String,
    #[serde(rename = "errorCode", default)]
    error_code: String,
}

impl HttpSender {
    /// `connections` idle connections are kept, so every sender (or every request in flight)
    /// reuses one instead of paying a TCP handshake per request. Plain HTTP only: an intake
    /// runs behind whatever terminates TLS.
    pub fn new(base: &url::Url, connections: usize, timeout: Duration) -> anyhow::Result<Self> {
        if base.scheme() != "http" {
            anyhow::bail!("--target `{base}`: loadgen speaks plain http:// to an intake");
        }
        let url = base
            .join(SUBSCRIBE_PATH)
            .with_context(|| format!("`{base}` cannot take the path {SUBSCRIBE_PATH}"))?;
        let uri: Uri = url
            .as_str()
            .parse()
            .with_context(|| format!("`{url}` is not a URI"))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(5))));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(connections)
            .build(connector);
        Ok(HttpSender {
            client,
            uri,
            timeout,
        })
    }

    pub fn url(&self) -> &Uri {
        &self.uri
    }
}

impl drive::Send for HttpSender {
    async fn send(&self, request: &Prepared) -> Answer {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(request.body.clone()));
        let Ok(request) = request else {
            return Answer::Error("other");
        };
        let exchange = async {
            let response = self.client.request(request).await.map_err(|error| {
                if error.is_connect() {
                    "connect"
                } else {
                    "other"
                }
            })?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|_| "body")?
                .to_bytes();
            Ok::<_, &'static str>((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((status, body))) => Answer::Http {
                status,
                code: answer_code(&body),
            },
            Ok(Err(kind)) => Answer::Error(kind),
            Err(_) => Answer::Error("timeout"),
        }
    }
}

/// `S`, or the `errorCode`, or `F` / `-` when a failure names none or the body is not ours.
fn answer_code(body: &[u8]) -> String {
    match serde_json::from_slice::<Flat>(body) {
        Ok(flat) if flat.operate_code == "S" => "S".to_owned(),
        Ok(flat) if !flat.error_code.is_empty() => flat.error_code,
        Ok(flat) if !flat.operate_code.is_empty() => flat.operate_code,
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_code_is_s_or_the_error_code() {
        assert_eq!(
            answer_code(br#"{"operateCode":"S","message":"accepted"}"#),
            "S"
        );
        assert_eq!(
            answer_code(br#"{"operateCode":"F","errorCode":"PAY_ID_CONFLICT"}"#),
            "PAY_ID_CONFLICT"
        );
        assert_eq!(answer_code(br#"{"operateCode":"F"}"#), "F");
        assert_eq!(answer_code(b"<html>"), "-");
    }
}
