//! The intake's shutdown: it stops accepting, answers the requests in hand with their
//! answers (a `Prefer: wait` ends at once), then closes.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{SECRET, TestStack, poll_until, signed, valid_request};

#[tokio::test]
async fn a_request_held_by_prefer_wait_is_answered_at_once_on_shutdown() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let body = signed(valid_request(), SECRET).to_string();
    // No worker runs: without the shutdown the answer would wait the full 20 s.
    let held = app
        .client
        .post(format!("{}/stripeSubDirectly", app.address))
        .header("content-type", "application/json")
        .header("prefer", "wait=20")
        .body(body)
        .send();
    let held = tokio::spawn(held);
    tokio::time::sleep(Duration::from_millis(500)).await;

    app.stop();
    let stopped = Instant::now();
    let answer = held.await.expect("the request task").expect("an answer");
    let waited = stopped.elapsed();
    let status = answer.status();
    let answer: Value = answer.json().await.expect("json");
    let address = app.address.trim_start_matches("http://").to_owned();
    let refused = poll_until(Duration::from_secs(5), || {
        let address = address.clone();
        async move { tokio::net::TcpStream::connect(address).await.is_err() }
    })
    .await;

    assert!(
        waited < Duration::from_secs(3),
        "answered {waited:?} after the shutdown"
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["operateCode"], "S", "{answer}");
    assert_eq!(answer["status"], "processing", "{answer}");
    assert!(refused, "the stopped intake still accepts connections");
    stack.teardown().await;
}
