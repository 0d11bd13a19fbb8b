//! `autorenew loadgen` in-process against a real intake (and, for following, a stand-in worker
//! that publishes result events by the contract). Tests count; they never time anything.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use loadgen::{LoadgenArgs, Plan, Report};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{OTHER_PARTNER, SHARED_AMQP, SHARED_REDIS, TestStack, test_settings};
use crate::wiring::loadgen_defaults;

/// `autorenew loadgen`'s flags, as its subcommand parses them.
#[derive(Debug, Parser)]
struct Flags {
    #[command(flatten)]
    loadgen: LoadgenArgs,
}

/// The flags as the command line would parse them.
fn args(flags: &[&str]) -> LoadgenArgs {
    let argv = ["loadgen", "--quiet"].iter().chain(flags);
    Flags::try_parse_from(argv)
        .expect("the flags parse")
        .loadgen
}

/// loadgen as `autorenew loadgen` runs it, with its defaults from `app_settings`.
async fn run(app_settings: &autorenew::config::Settings, flags: &[&str]) -> Report {
    let plan = Plan::new(&loadgen_defaults(app_settings), &args(flags)).expect("a valid plan");
    loadgen::execute(&plan, &CancellationToken::new())
        .await
        .expect("the run completes")
}

fn answers(report: &Report, key: &str) -> u64 {
    report.answers.get(key).copied().unwrap_or(0)
}

#[tokio::test]
async fn intake_only_load_gets_the_answer_each_request_kind_expects() {
    // Arrange
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();

    // Act
    let report = run(
        &app.settings,
        &[
            "--target",
            &app.address,
            "--no-follow",
            "--requests",
            "200",
            "--concurrency",
            "8",
            "--duplicate-share",
            "0.1",
            "--conflict-share",
            "0.1",
            "--invalid-share",
            "0.15",
        ],
    )
    .await;

    // Assert
    let sent = &report.sent;
    assert_eq!(sent.total, 200);
    assert_eq!(
        sent.fresh + sent.duplicates + sent.conflicts + sent.invalid,
        200
    );
    assert_eq!(sent.invalid, 30);
    // Only the very first requests, with nothing accepted yet to repeat, fall back to fresh.
    assert!(sent.duplicates >= 15 && sent.conflicts >= 15, "{sent:?}");
    assert_eq!(answers(&report, "200 S"), sent.fresh + sent.duplicates);
    assert_eq!(answers(&report, "409 PAY_ID_CONFLICT"), sent.conflicts);
    assert_eq!(answers(&report, "401 SIGN_INVALID"), 10);
    assert_eq!(answers(&report, "400 PARAM_MISSING"), 10);
    assert_eq!(answers(&report, "400 PARAM_INVALID"), 10);
    assert_eq!(report.checks.expected, 200, "{:?}", report.mismatched);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.results.is_none());
    assert_eq!(report.latency_ms.all.map(|p| p.count), Some(200));

    // One job per distinct valid payId: duplicates and conflicts made none.
    let jobs = app.jobs_queued(200, Duration::from_secs(3)).await;
    assert_eq!(jobs.len() as u64, sent.fresh);
    stack.teardown().await;
}

#[tokio::test]
async fn an_open_loop_run_sends_its_count() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();

    let report = run(
        &app.settings,
        &[
            "--target",
            &app.address,
            "--no-follow",
            "--rate",
            "400",
            "--requests",
            "100",
        ],
    )
    .await;

    assert_eq!(report.sent.total, 100);
    assert_eq!(answers(&report, "200 S"), 100);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    stack.teardown().await;
}

#[tokio::test]
async fn the_baseline_confirms_every_message_and_removes_its_queue() {
    let settings = test_settings(SHARED_AMQP, SHARED_REDIS);

    let report = run(
        &settings,
        &["--baseline", "--requests", "500", "--concurrency", "16"],
    )
    .await;

    assert_eq!(report.mode, "baseline");
    assert_eq!(report.sent.total, 500);
    assert_eq!(answers(&report, "ack"), 500);
    assert_eq!(report.checks.expected, 500);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let queue = report
        .target
        .strip_prefix("queue ")
        .expect("the target names the queue");
    assert!(queue.starts_with(&settings.amqp.prefix));
    assert!(!queue_exists(queue).await, "the scratch queue is deleted");
}

#[tokio::test]
async fn following_counts_results_redeliveries_second_outcomes_and_lost_jobs() {
    // Arrange: a stand-in worker that answers every job with a result event, except that the
    // first job's event is delivered twice (same id), the second gets a second, different
    // outcome, and the third gets none.
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(stand_in_worker(
        app.prefix().to_owned(),
        stop.clone(),
        Quirks::FirstThree,
        StripeCalls::default(),
    ));

    // Act
    let report = run(
        &app.settings,
        &[
            "--target",
            &app.address,
            "--requests",
            "40",
            "--concurrency",
            "4",
            "--duplicate-share",
            "0.25",
            "--result-timeout",
            "3s",
        ],
    )
    .await;
    stop.cancel();
    let _ = worker.await;

    // Assert
    let results = report.results.as_ref().expect("followed");
    assert_eq!(results.followed, report.sent.fresh);
    assert_eq!(results.received, results.followed - 1);
    assert_eq!(results.no_result, 1);
    assert_eq!(results.outcomes.get("active"), Some(&results.received));
    assert_eq!(results.duplicate_events.same_id, 1);
    assert_eq!(results.duplicate_events.different_id, 1);
    assert_eq!(
        results.completion_ms.map(|p| p.count),
        Some(results.received as usize)
    );
    assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
    assert!(report.failures.iter().any(|f| f.contains("DUPLICATES")));
    stack.teardown().await;
}

/// What the stand-in worker does wrong on purpose.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Quirks {
    /// Nothing: one result event a job.
    None,
    /// The first job's event twice (same id), a second outcome for the second job, no event
    /// for the third.
    FirstThree,
}

/// The Stripe calls the stand-in worker counts by partner, as a worker's `/metrics` shows them.
type StripeCalls = Arc<Mutex<BTreeMap<String, u64>>>;

/// Calls the stand-in worker counts for each job (a new customer's three).
const CALLS_A_JOB: u64 = 3;

/// Consumes jobs and publishes CloudEvents to the results exchange as docs/partners.md#events-and-the-broker says.
async fn stand_in_worker(
    prefix: String,
    stop: CancellationToken,
    quirks: Quirks,
    calls: StripeCalls,
) {
    let connection = crate::helpers::shared_amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    // Every queue the intake puts jobs in: each test partner's lane and the shared queue.
    let mut lanes = Vec::new();
    for (index, queue) in [
        crate::helpers::lane(&prefix, crate::helpers::PARTNER),
        crate::helpers::lane(&prefix, crate::helpers::OTHER_PARTNER),
        format!("{prefix}.jobs"),
    ]
    .into_iter()
    .enumerate()
    {
        lanes.push(
            channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("stand-in-worker-{index}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("consume the jobs"),
        );
    }
    let mut jobs = futures_util::stream::select_all(lanes);
    let results = format!("{prefix}.results");
    let mut seen = 0;
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => break,
            delivery = jobs.next() => match delivery {
                Some(Ok(delivery)) => delivery,
                _ => break,
            },
        };
        let job: Value = serde_json::from_slice(&delivery.data).expect("a JSON job");
        let pay_id = job["payId"].as_str().expect("payId").to_owned();
        let partner = job["partnerCode"].as_str().expect("partnerCode").to_owned();
        *calls
            .lock()
            .expect("the counts")
            .entry(partner.clone())
            .or_insert(0) += CALLS_A_JOB;
        let events = match (quirks, seen) {
            (Quirks::None, _) => vec![event(&pay_id, "e-1")],
            (_, 0) => vec![event(&pay_id, "e-1"), event(&pay_id, "e-1")],
            (_, 1) => vec![event(&pay_id, "e-1"), event(&pay_id, "e-2")],
            (_, 2) => vec![],
            _ => vec![event(&pay_id, "e-1")],
        };
        seen += 1;
        for body in events {
            channel
                .basic_publish(
                    results.as_str().into(),
                    format!("subscription.succeeded.{partner}").into(),
                    BasicPublishOptions::default(),
                    body.to_string().as_bytes(),
                    BasicProperties::default()
                        .with_content_type("application/cloudevents+json".into()),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
        }
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let _ = connection.close(200, "done".into()).await;
}

fn event(pay_id: &str, id: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("{pay_id}-{id}"),
        "source": "autorenew/worker",
        "type": "autorenew.subscription.succeeded",
        "subject": pay_id,
        "time": "2026-01-01T00:00:00Z",
        "datacontenttype": "application/json",
        "data": {"payId": pay_id, "status": "active", "error": null},
    })
}

async fn queue_exists(queue: &str) -> bool {
    let connection = crate::helpers::shared_amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let exists = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_ok();
    let _ = connection.close(200, "done".into()).await;
    exists
}

/// `--renewals`: the whole stack (simulator with webhooks to the intake, a worker), creations
/// followed, then two periods; every subscription created active is announced renewed twice,
/// and the jobs whose card declined are not expected to renew.
#[tokio::test]
async fn renewals_are_followed_for_every_active_subscription() {
    let stack = TestStack::deployment().webhooks().workers(1).start().await;
    let report = run(
        &stack.settings,
        &[
            "--target",
            &stack.intake().address,
            "--requests",
            "20",
            "--concurrency",
            "4",
            "--decline-share",
            "0.25",
            "--renewals",
            "2",
            "--result-timeout",
            "30s",
        ],
    )
    .await;
    let results = report.results.as_ref().expect("followed");
    let active = results.outcomes.get("active").copied().unwrap_or(0);
    assert!(active > 0 && active < 20, "{:?}", results.outcomes);
    let renewals = results.renewals.as_ref().expect("renewals followed");
    assert_eq!(renewals.subscriptions, active);
    assert_eq!(renewals.renewed_every_period, active, "{renewals:?}");
    assert_eq!(renewals.missing, 0);
    assert_eq!(renewals.renewed_events, 2 * active);
    assert!(renewals.to_last_event_ms.is_some());
    assert_eq!(results.duplicate_events.different_id, 0);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    stack.teardown().await;
}

/// `--webhooks`: signed Stripe events, each of its own id, all taken by the intake.
#[tokio::test]
async fn webhook_load_is_taken_event_by_event() {
    let stack = TestStack::builder()
        .settings(|settings| {
            settings.stripe.webhook_secrets =
                vec![secrecy::SecretString::from("whsec_loadgen_test")];
        })
        .intake()
        .start()
        .await;
    let report = run(
        &stack.settings,
        &[
            "--target",
            &stack.intake().address,
            "--webhooks",
            "--requests",
            "30",
        ],
    )
    .await;
    assert_eq!(answers(&report, "200 S"), 30, "{:?}", report.answers);
    assert!(report.results.is_none());
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    stack.teardown().await;
}

/// `--pace`: two partners at once, a burst and a steady rate that lasts until the burst has all
/// its results; each followed by its own routing key and reported apart, with the Stripe calls
/// by partner read from a worker's `/metrics`.
#[tokio::test]
async fn several_partners_are_paced_followed_and_reported_each_on_their_own() {
    // Arrange
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let stop = CancellationToken::new();
    let calls = StripeCalls::default();
    let worker = tokio::spawn(stand_in_worker(
        app.prefix().to_owned(),
        stop.clone(),
        Quirks::None,
        calls.clone(),
    ));
    let metrics = serve_metrics(calls, stop.clone()).await;
    let burst = "P000818";

    // Act
    let flags = [
        "--target",
        &app.address,
        "--pace",
        &format!("{burst}:burst:30"),
        "--pace",
        &format!("{OTHER_PARTNER}:20"),
        "--concurrency",
        "4",
        "--result-timeout",
        "10s",
        "--worker-metrics",
        &metrics,
    ];
    let plan =
        loadgen::partners::PartnersPlan::new(&loadgen_defaults(&app.settings), &args(&flags))
            .expect("a valid plan");
    let report = loadgen::partners::execute(&plan, &CancellationToken::new())
        .await
        .expect("the run completes");
    stop.cancel();
    let _ = worker.await;

    // Assert
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let [a, b] = &report.partners[..] else {
        panic!("two partners: {:?}", report.partners);
    };
    assert_eq!(
        (a.partner.as_str(), b.partner.as_str()),
        (burst, OTHER_PARTNER)
    );
    assert_eq!(
        (a.sent, a.accepted, a.succeeded, a.no_result),
        (30, 30, 30, 0)
    );
    assert!(
        b.sent > 0,
        "the steady partner sent while the burst was served"
    );
    assert_eq!((b.accepted, b.succeeded, b.no_result), (b.sent, b.sent, 0));
    assert_eq!(a.result_ms.map(|p| p.count), Some(30));
    assert_eq!(a.stripe_calls, Some(30 * CALLS_A_JOB));
    assert_eq!(b.stripe_calls, Some(b.sent * CALLS_A_JOB));
    let whole = report
        .stripe_calls
        .as_ref()
        .expect("--worker-metrics was given");
    assert_eq!(whole.total, (30 + b.sent) * CALLS_A_JOB);
    assert!(report.shared_window.is_none(), "one partner with a count");
    stack.teardown().await;
}

/// A worker's `/metrics` page with `autorenew_stripe_requests_total` by partner; its URL.
async fn serve_metrics(calls: StripeCalls, stop: CancellationToken) -> String {
    let page = move || {
        let calls = calls.clone();
        async move {
            let counts = calls.lock().expect("the counts").clone();
            let mut text = "# TYPE autorenew_stripe_requests_total counter\n".to_owned();
            for (partner, n) in counts {
                text.push_str(&format!(
                    "autorenew_stripe_requests_total{{operation=\"customers.create\",partner=\"{partner}\"}} {n}\n"
                ));
            }
            text
        }
    };
    let router = axum::Router::new().route("/metrics", axum::routing::get(page));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    format!("http://{address}")
}
