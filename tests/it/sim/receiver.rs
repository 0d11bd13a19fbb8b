//! A webhook receiver on a free port: it keeps every delivery it gets and answers each with
//! the next status queued (`200` when none is), as an intake that is down or flaky would.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

/// One delivery as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub signature: String,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON event")
    }

    pub fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    /// Checks the signature as Stripe documents it, computed here independently of the
    /// simulator's code: `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
    pub fn signed_with(&self, secret: &str) -> bool {
        let mut t = None;
        let mut v1 = Vec::new();
        for part in self.signature.split(',') {
            match part.split_once('=') {
                Some(("t", value)) => t = Some(value.to_owned()),
                Some(("v1", value)) => v1.push(value.to_owned()),
                _ => {}
            }
        }
        let Some(t) = t else { return false };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
        mac.update(format!("{t}.").as_bytes());
        mac.update(&self.body);
        let expected = hex::encode(mac.finalize().into_bytes());
        v1.contains(&expected)
    }
}

#[derive(Default)]
struct Inbox {
    received: Vec<Received>,
    answers: VecDeque<u16>,
}

pub struct Receiver {
    pub url: String,
    inbox: Arc<Mutex<Inbox>>,
    shutdown: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn take(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut inbox = inbox.lock().expect("inbox");
    inbox.received.push(Received { signature, body });
    let status = inbox.answers.pop_front().unwrap_or(200);
    StatusCode::from_u16(status).expect("a status")
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!(
            "http://{}/stripe/webhook",
            listener.local_addr().expect("an address")
        );
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let app = axum::Router::new()
            .route("/stripe/webhook", post(take))
            .with_state(Arc::clone(&inbox));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Receiver {
            url,
            inbox,
            shutdown,
        }
    }

    /// The next deliveries get these statuses, in order.
    pub fn answer(&self, statuses: &[u16]) {
        self.inbox
            .lock()
            .expect("inbox")
            .answers
            .extend(statuses.iter().copied());
    }

    pub fn received(&self) -> Vec<Received> {
        self.inbox.lock().expect("inbox").received.clone()
    }

    /// Waits (at most five seconds) until `check` holds for what arrived, and returns it.
    pub async fn wait_for(&self, check: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let received = self.received();
            if check(&received) {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "deliveries never matched; got {:?}",
                received.iter().map(Received::kind).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for one delivery of each of `kinds`, returning the deliveries of those kinds.
    pub async fn wait_for_kinds(&self, kinds: &[&str]) -> Vec<Received> {
        let received = self
            .wait_for(|got| kinds.iter().all(|k| got.iter().any(|r| r.kind() == *k)))
            .await;
        received
            .into_iter()
            .filter(|r| kinds.contains(&r.kind().as_str()))
            .collect()
    }
}
