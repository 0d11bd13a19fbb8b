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
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use signatures::stripe::{SIGNATURE_HEADER, sign};

use super::drive;
use super::payload::Prepared;
use super::report::Answer;

/// The endpoint loadgen drives.
pub const SUBSCRIBE_PATH: &str = "/stripeSubDirectly";
/// The endpoint `--webhooks` drives.
pub const WEBHOOK_PATH: &str = "/stripe/webhook";

/// A pooled HTTP/1 client bound to one intake.
pub struct HttpSender {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    timeout: Duration,
    /// `--webhooks`: each request becomes a Stripe event of its own id, signed with this secret.
    webhook_secret: Option<SecretString>,
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
    pub fn new(
        base: &url::Url,
        connections: usize,
        timeout: Duration,
        webhook_secret: Option<SecretString>,
    ) -> anyhow::Result<Self> {
        if base.scheme() != "http" {
            anyhow::bail!("--target `{base}`: loadgen speaks plain http:// to an intake");
        }
        let path = if webhook_secret.is_some() {
            WEBHOOK_PATH
        } else {
            SUBSCRIBE_PATH
        };
        let url = base
            .join(path)
            .with_context(|| format!("`{base}` cannot take the path {path}"))?;
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
            webhook_secret,
        })
    }

    pub fn url(&self) -> &Uri {
        &self.uri
    }
}

impl drive::Send for HttpSender {
    async fn send(&self, request: &Prepared) -> Answer {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, "application/json");
        let body = match &self.webhook_secret {
            Some(secret) => {
                let (body, signature) = stripe_event(&request.pay_id, secret);
                builder = builder.header(SIGNATURE_HEADER, signature);
                body
            }
            None => request.body.clone(),
        };
        let request = builder.body(Full::new(body));
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

/// An `invoice.paid` event of Stripe's shape (its documented example's fields), with an id of
/// its own per payId, and its `Stripe-Signature` header signed now. The invoice names no
/// subscription of ours: a worker consuming these ignores them, the intake takes each once.
fn stripe_event(pay_id: &str, secret: &SecretString) -> (Bytes, String) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Stripe's ids are letters, digits and `_`; the intake refuses others.
    let id: String = pay_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let event = serde_json::json!({
        "id": format!("evt_{id}"),
        "object": "event",
        "api_version": "2019-02-19",
        "created": now,
        "data": {"object": {"id": format!("in_{id}"), "object": "invoice",
                            "billing_reason": "subscription_cycle", "status": "paid"}},
        "livemode": false,
        "pending_webhooks": 0,
        "request": {"id": null, "idempotency_key": null},
        "type": "invoice.paid",
    });
    let body = Bytes::from(event.to_string());
    let signature = sign(&body, secret.expose_secret(), now);
    (body, signature)
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
