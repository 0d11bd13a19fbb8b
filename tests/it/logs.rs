//! What the service writes to its log never holds a partner secret, a payment method id or a
//! whole email address, even at debug level.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Answer, SECRET, delete_queues, repo_path, signed, valid_request};

#[tokio::test]
async fn a_partner_secret_never_appears_in_the_logs() {
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let mut child = Command::new(env!("CARGO_BIN_EXE_autorenew"))
        .arg("--config")
        .arg(repo_path("config.toml"))
        .arg("intake")
        .env("RUST_LOG", "debug")
        .env("AUTORENEW__INTAKE__LISTEN", "127.0.0.1:0")
        .env("AUTORENEW__AMQP__PREFIX", &prefix)
        .env("AUTORENEW__REDIS__KEY_PREFIX", &prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("autorenew intake starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the listening line");
    let address = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    let client = reqwest::Client::new();
    let ready = crate::helpers::poll_until(Duration::from_secs(20), || async {
        client
            .get(format!("{address}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready);

    let good = signed(valid_request(), SECRET);
    let mut bad_sign = good.clone();
    bad_sign["payAmount"] = json!("1.00");
    let mut conflict = good.clone();
    conflict["email"] = json!("someone.else@example.com");
    let conflict = signed(conflict, SECRET);
    for body in [&good, &bad_sign, &good, &conflict] {
        let response = client
            .post(format!("{address}/stripeSubDirectly"))
            .json(body)
            .send()
            .await
            .expect("POST");
        Answer::from(response).await;
    }

    let _ = child.kill();
    let _ = child.wait();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .expect("logs");
    delete_queues(&prefix).await;

    assert!(logs.contains("job enqueued"), "the run was logged: {logs}");
    assert!(!logs.contains(SECRET), "a partner secret was logged");
    assert!(
        !logs.contains("pm_1GnMUDLnVNBddzslXw7xuoe6"),
        "a payment method id was logged"
    );
    assert!(
        !logs.contains("421516116@qq.com"),
        "a whole email address was logged"
    );
    assert!(
        !logs.contains("guest:guest"),
        "broker credentials were logged"
    );
}
