//! `autorenew probe URL` as a container healthcheck runs it: exit 0 on 2xx, 1 otherwise; and
//! `autorenew intake` without a configuration file refuses to start, as the image does when no
//! configuration is mounted.

use std::process::Command;

use crate::helpers::TestStack;

/// Runs the binary off the runtime's threads, so the intake under test keeps serving.
async fn probe(url: String) -> (i32, String) {
    tokio::task::spawn_blocking(move || probe_blocking(&url))
        .await
        .expect("probe runs")
}

fn probe_blocking(url: &str) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_autorenew"))
        .args(["probe", "--timeout-ms", "2000", url])
        .output()
        .expect("autorenew runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn probe_exits_0_on_a_ready_intake_and_1_on_a_404_or_a_closed_port() {
    let stack = TestStack::builder().intake().start().await;
    let intake = stack.intake();
    let base = &intake.address;
    assert_eq!(probe(format!("{base}/healthz")).await.0, 0);
    assert_eq!(probe(format!("{base}/readyz")).await.0, 0);
    let (code, stderr) = probe(format!("{base}/nowhere")).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    assert_eq!(probe(format!("http://127.0.0.1:{port}/readyz")).await.0, 1);
    stack.teardown().await;
}

#[test]
fn intake_without_a_configuration_file_refuses_to_start_and_says_why() {
    let empty = tempfile::tempdir().expect("dir");
    let output = Command::new(env!("CARGO_BIN_EXE_autorenew"))
        .arg("intake")
        .current_dir(empty.path())
        .output()
        .expect("autorenew runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no partner is configured"), "{stderr}");
}
