//! The HTTP side: one pooled client POSTing prepared bodies to `/stripeSubDirectly`, and the
//! answer read the way a partner reads it (status, `operateCode`, `errorCode`).

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use super::drive;
use super::payload::Prepared;
use super::report::Answer;

/// The endpoint loadgen drives.
pub const SUBSCRIBE_PATH: &str = "/stripeSubDirectly";

/// A pooled HTTP/1 client bound to one intake.
pub struct HttpSender {
    client: reqwest::Client,
    url: reqwest::Url,
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
    /// reuses one instead of paying a TCP handshake per request.
    pub fn new(base: &reqwest::Url, connections: usize, timeout: Duration) -> anyhow::Result<Self> {
        let url = base
            .join(SUBSCRIBE_PATH)
            .with_context(|| format!("`{base}` cannot take the path {SUBSCRIBE_PATH}"))?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .tcp_nodelay(true)
            // An intake never redirects; following one could send load somewhere unintended.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client")?;
        Ok(HttpSender { client, url })
    }

    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }
}

impl drive::Send for HttpSender {
    async fn send(&self, request: &Prepared) -> Answer {
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.body.clone())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => return Answer::Error(transport_error(&error)),
        };
        let status = response.status().as_u16();
        match response.bytes().await {
            Ok(body) => Answer::Http {
                status,
                code: answer_code(&body),
            },
            Err(error) => Answer::Error(if error.is_timeout() {
                "timeout"
            } else {
                "body"
            }),
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

fn transport_error(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "other"
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
