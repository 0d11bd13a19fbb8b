//! What the service writes to its log never holds a partner secret, a payment method id or a
//! whole email address, even at debug level.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    Answer, SECRET, SHARED_REDIS, delete_keys, delete_queues, repo_path, signed, valid_request,
};

#[tokio::test]
async fn a_partner_secret_never_appears_in_the_logs() {
    let service = Service::start(&["intake"]).await;
    let (address, client) = (service.address.clone(), reqwest::Client::new());

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

    let logs = service.stop().await;

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

#[tokio::test]
async fn a_webhook_secret_and_signature_never_appear_in_the_logs() {
    const WEBHOOK_SECRET: &str = "whsec_never_logged_1234";
    let service = Service::start_with(
        &["intake"],
        &[("AUTORENEW__STRIPE__WEBHOOK_SECRETS", WEBHOOK_SECRET)],
    )
    .await;
    let client = reqwest::Client::new();
    let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
    let body = format!(
        r#"{{"id":"{id}","object":"event","created":1,"data":{{"object":{{}}}},"livemode":false,"pending_webhooks":1,"type":"invoice.paid"}}"#
    );
    let t = time::OffsetDateTime::now_utc().unix_timestamp();
    let good = autorenew::domain::webhook::sign(body.as_bytes(), WEBHOOK_SECRET, t);
    let bad = autorenew::domain::webhook::sign(body.as_bytes(), "whsec_other", t);
    for header in [&good, &bad, &good] {
        let response = client
            .post(format!("{}/stripe/webhook", service.address))
            .header("stripe-signature", header.as_str())
            .body(body.clone())
            .send()
            .await
            .expect("POST");
        Answer::from(response).await;
    }

    let logs = service.stop().await;

    assert!(
        logs.contains("Stripe event enqueued"),
        "the run was logged: {logs}"
    );
    assert!(logs.contains(&id), "the event id is logged");
    assert!(
        !logs.contains(WEBHOOK_SECRET),
        "a webhook secret was logged"
    );
    for header in [&good, &bad] {
        let v1 = header.split("v1=").nth(1).expect("v1");
        assert!(!logs.contains(v1), "a signature was logged");
    }
}

/// `autorenew run --log-json`: every line is JSON, every line of a job names its payId and
/// request id, and no secret, payment method id or whole email is in any of them.
#[tokio::test]
async fn a_full_run_logs_json_with_pay_id_and_request_id_and_no_secrets() {
    let service = Service::start(&["--log-json", "run", "--sim-listen", "127.0.0.1:0"]).await;
    let (address, client) = (service.address.clone(), reqwest::Client::new());

    let request = signed(valid_request(), SECRET);
    let pay_id = request["payId"].as_str().expect("payId").to_owned();
    let response = client
        .post(format!("{address}/stripeSubDirectly"))
        .header("prefer", "wait=15")
        .header("x-request-id", "req-logs-test-1")
        .json(&request)
        .send()
        .await
        .expect("POST");
    let answer = Answer::from(response).await;
    assert_eq!(answer.body["status"], "active", "{:?}", answer.body);

    let logs = service.stop().await;

    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let of_job: Vec<_> = lines
        .iter()
        .filter(|l| l.to_string().contains(&pay_id))
        .collect();
    assert!(
        of_job.iter().any(|l| l["message"] == "job finished"),
        "{logs}"
    );
    assert!(
        of_job.iter().any(|l| l["message"] == "job enqueued"),
        "{logs}"
    );
    for line in &of_job {
        let text = line.to_string();
        assert!(
            text.contains("req-logs-test-1"),
            "a job line without its request id: {text}"
        );
    }
    assert!(!logs.contains(SECRET), "a partner secret was logged");
    assert!(
        !logs.contains("pm_card_visa") && !logs.contains("pm_1GnMUDLnVNBddzslXw7xuoe6"),
        "a payment method id was logged"
    );
    assert!(
        !logs.contains("421516116@qq.com"),
        "a whole email address was logged"
    );
    assert!(!logs.contains("sk_test_"), "a Stripe key was logged");
}

/// The real binary at debug level, on random ports with a fresh prefix; its stderr is kept.
struct Service {
    child: Child,
    address: String,
    prefix: String,
}

impl Service {
    /// Starts `autorenew <args>` and waits until its intake is ready.
    async fn start(args: &[&str]) -> Service {
        Self::start_with(args, &[]).await
    }

    /// As `start`, with more environment variables.
    async fn start_with(args: &[&str], envs: &[(&str, &str)]) -> Service {
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let mut child = Command::new(env!("CARGO_BIN_EXE_autorenew"))
            .arg("--config")
            .arg(repo_path("config.toml"))
            .args(args)
            .env("RUST_LOG", "debug")
            .env("AUTORENEW__INTAKE__LISTEN", "127.0.0.1:0")
            .env("AUTORENEW__WORKER__LISTEN", "127.0.0.1:0")
            .env("AUTORENEW__AMQP__PREFIX", &prefix)
            .env("AUTORENEW__REDIS__KEY_PREFIX", &prefix)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("autorenew starts");
        // `intake` prints "… intake listening on http://…", `run` "  intake     http://…".
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let address = (0..10)
            .map_while(|_| {
                let mut line = String::new();
                (stdout.read_line(&mut line).unwrap_or(0) > 0).then_some(line)
            })
            .find(|line| line.contains("intake") && line.contains("http://"))
            .and_then(|line| {
                line.split_whitespace()
                    .find(|word| word.starts_with("http://"))
                    .map(str::to_owned)
            })
            .expect("the intake's address on stdout");
        let client = reqwest::Client::new();
        let ready = crate::helpers::poll_until(Duration::from_secs(20), || async {
            client
                .get(format!("{address}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ready, "the service became ready");
        Service {
            child,
            address,
            prefix,
        }
    }

    /// Stops it with SIGTERM and returns everything it logged.
    async fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let mut logs = String::new();
        self.child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut logs)
            .expect("logs");
        delete_queues(&self.prefix).await;
        delete_keys(SHARED_REDIS, &self.prefix).await;
        // `run` with its simulator keeps its keys under a prefix of its own,
        // `<prefix>.run-<millis>` (src/run.rs): a pattern, as `KEYS` reads it.
        delete_keys(SHARED_REDIS, &format!("{}.run-*", self.prefix)).await;
        logs
    }
}
