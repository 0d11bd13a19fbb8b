//! `autorenew events`: the result events, one JSON object a line, as they are published.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::TestStack;

/// The lines a child writes to one of its pipes, as they come.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

#[tokio::test]
async fn autorenew_events_prints_each_result_event_as_one_json_line() {
    let stack = TestStack::deployment().workers(1).start().await;
    let mut child = stack
        .autorenew(&["events", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("autorenew events starts");
    let stdout = lines_of(child.stdout.take().expect("stdout"));
    let stderr = lines_of(child.stderr.take().expect("stderr"));
    let bound = tokio::task::spawn_blocking(move || {
        while let Ok(line) = stderr.recv_timeout(Duration::from_secs(15)) {
            if line.contains("printing the events of") {
                return Some(line);
            }
        }
        None
    })
    .await
    .expect("joined");
    assert!(bound.is_some(), "autorenew events never said it listens");

    let pay_id = stack.send(|_| {}).await;
    let line = tokio::task::spawn_blocking(move || stdout.recv_timeout(Duration::from_secs(20)))
        .await
        .expect("joined")
        .expect("an event line");
    let exited = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined")
        .expect("waits");

    let event: Value = serde_json::from_str(&line).expect("one JSON object a line");
    assert_eq!(event["subject"], pay_id.as_str(), "{line}");
    assert_eq!(event["type"], "autorenew.subscription.succeeded", "{line}");
    assert_eq!(event["data"]["status"], "active", "{line}");
    assert!(exited.success(), "--count 1 ends it after one event");
    stack.teardown().await;
}
