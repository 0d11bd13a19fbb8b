//! The intake part of a [`TestStack`](super::stack::TestStack): the intake on its own port,
//! and a client that speaks to it as a partner does (signed JSON over HTTP).

use std::time::Duration;

use autorenew::config::Settings;
use autorenew::intake::Application;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Answer, PARTNER, Received, SECRET, lane, poll_until, read_queue, signed};

/// A running intake. Started by `TestStack::builder().intake()`; the stack stops it and
/// deletes its queues and keys in `teardown`.
pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
}

impl TestApp {
    /// Starts the intake and waits (bounded) until it is ready.
    pub(super) async fn start(settings: Settings) -> TestApp {
        let shutdown = CancellationToken::new();
        let app = Application::build(&settings, shutdown.clone())
            .await
            .expect("the intake builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let intake = TestApp {
            address,
            settings,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("client"),
            shutdown,
        };
        let ready = poll_until(Duration::from_secs(20), || async {
            intake.get("/readyz").await.status() == 200
        })
        .await;
        assert!(ready, "the intake did not become ready");
        intake
    }

    pub fn prefix(&self) -> &str {
        &self.settings.amqp.prefix
    }

    /// The jobs the intake put on the demo partner's lane: up to `count` (asking for more than
    /// are expected shows a job too many), read for at most `limit`.
    pub async fn jobs_queued(&self, count: usize, limit: Duration) -> Vec<Received> {
        read_queue(&lane(self.prefix(), PARTNER), count, limit).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{}", self.address, path))
            .send()
            .await
            .expect("GET")
    }

    /// POSTs raw bytes with the given content type (None: no Content-Type header).
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        content_type: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{}", self.address, path))
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.expect("POST")
    }

    /// Signs `params` with `secret` (fresh tradeTime unless given) and POSTs them as JSON.
    pub async fn post_signed(&self, path: &str, params: Value, secret: &str) -> Answer {
        let body = signed(params, secret);
        Answer::from(
            self.post_raw(path, body.to_string(), Some("application/json"))
                .await,
        )
        .await
    }

    pub async fn subscribe(&self, params: Value) -> Answer {
        self.post_signed("/stripeSubDirectly", params, SECRET).await
    }

    /// Starts the intake's shutdown, as SIGTERM does; the stack's `teardown` still cleans up
    /// after.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}
