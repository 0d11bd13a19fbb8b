//! Worker processes side by side, killed, and stopped: nothing lost, nothing twice.

use std::collections::HashSet;
use std::time::Duration;

use autorenew::domain::Job;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::json;
use stripe_sim::faults::FaultConfig;

use crate::helpers::sim::{subscription_creates, subscriptions_by_pay_id};
use crate::helpers::{TestStack, poll_until};

fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn assert_once_each(stack: &TestStack, pay_ids: &[String], stats: &serde_json::Value) {
    let events = stack.events_by_pay_id();
    let subscriptions = subscriptions_by_pay_id(stats);
    for pay_id in pay_ids {
        let outcomes: HashSet<_> = events[pay_id].iter().map(|e| e["id"].clone()).collect();
        assert_eq!(outcomes.len(), 1, "{pay_id}: {:?}", events[pay_id]);
        assert_eq!(
            subscriptions.get(pay_id),
            Some(&1),
            "{pay_id} has one subscription: {:?}",
            events[pay_id]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pay_id_sent_to_two_worker_processes_at_once_makes_one_subscription() {
    let stack = TestStack::deployment()
        .simulator(FaultConfig {
            latency_p50_ms: 30,
            latency_p99_ms: 30,
            ..FaultConfig::default()
        })
        .start()
        .await;
    // One accepted job, then copies of it straight onto the queue, as a broker redelivery or a
    // second intake would put them there.
    let pay_id = stack.send(|_| {}).await;
    let copy = crate::helpers::read_queue(
        &crate::helpers::lane(&stack.settings.amqp.prefix, crate::helpers::PARTNER),
        1,
        Duration::from_secs(5),
    )
    .await;
    let job: Job = serde_json::from_value(copy[0].body.clone()).expect("a job");
    let connection = crate::helpers::shared_amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    for _ in 0..10 {
        channel
            .basic_publish(
                format!("{}.jobs", stack.settings.amqp.prefix).into(),
                "job".into(),
                BasicPublishOptions::default(),
                &job.encode(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
    }
    let mut first = stack.worker_process();
    let mut second = stack.worker_process();

    let done = stack
        .wait_for_events(std::slice::from_ref(&pay_id), Duration::from_secs(30))
        .await;
    // Let every copy be handled before counting.
    poll_until(Duration::from_secs(30), || async {
        stack.events_by_pay_id().get(&pay_id).map_or(0, Vec::len) >= 10
    })
    .await;
    signal(&first, "-TERM");
    signal(&second, "-TERM");
    let _ = first.wait();
    let _ = second.wait();

    assert!(done);
    assert_once_each(
        &stack,
        std::slice::from_ref(&pay_id),
        &stack.sim().stats().await,
    );
    let _ = connection.close(200, "done".into()).await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_no_job_and_doubles_none() {
    let stack = TestStack::deployment()
        .simulator(FaultConfig {
            latency_p50_ms: 15,
            latency_p99_ms: 40,
            ..FaultConfig::default()
        })
        .start()
        .await;
    let mut survivor = stack.worker_process();
    let mut victim = stack.worker_process();

    let sends = (0..500).map(|i| {
        let stack = &stack;
        async move {
            stack
                .send(|r| r["email"] = json!(format!("kill{}@example.com", i % 50)))
                .await
        }
    });
    let pay_ids: Vec<String> = futures_util::future::join_all(sends).await;
    let midway = poll_until(Duration::from_secs(60), || async {
        stack.events().lock().expect("events").len() >= 100
    })
    .await;
    assert!(midway, "the run got going");
    signal(&victim, "-KILL");
    let _ = victim.wait();

    let all = stack
        .wait_for_events(&pay_ids, Duration::from_secs(120))
        .await;
    signal(&survivor, "-TERM");
    let status = survivor.wait().expect("survivor exits");

    assert!(all, "every job reached a final result");
    assert!(status.success(), "SIGTERM exits 0");
    assert_once_each(&stack, &pay_ids, &stack.sim().stats().await);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_jobs_in_hand_finishes_them_itself_and_loses_none() {
    // 200 ms a call, four or five calls a job: at the SIGTERM the worker holds its 16 jobs
    // (its concurrency) with their Stripe steps half done.
    let stack = TestStack::deployment()
        .simulator(FaultConfig {
            latency_p50_ms: 200,
            latency_p99_ms: 200,
            ..FaultConfig::default()
        })
        .start()
        .await;
    let mut worker = stack.worker_process_with_log();
    let log = worker.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || std::io::read_to_string(log).unwrap_or_default());
    let mut pay_ids = Vec::new();
    for _ in 0..40 {
        pay_ids.push(stack.send(|_| {}).await);
    }
    let busy = poll_until(Duration::from_secs(30), || async {
        !stack.events().lock().expect("events").is_empty()
    })
    .await;
    assert!(busy);

    signal(&worker, "-TERM");
    let status = worker.wait().expect("exits");
    let log = log.join().expect("the log");
    // What the worker left behind in Stripe: every subscription made before its exit belongs
    // to a job it had in hand, which it must have stored and announced itself.
    let made_before_exit: Vec<String> = subscriptions_by_pay_id(&stack.sim().stats().await)
        .into_keys()
        .collect();
    // Its events were published before it exited; give the tap a moment to receive them.
    let announced = poll_until(Duration::from_secs(5), || async {
        let seen = stack.events_by_pay_id();
        made_before_exit.iter().all(|p| seen.contains_key(p))
    })
    .await;
    let finished_by_first = stack.events_by_pay_id();

    // What it had not started is still on the queue: a new worker takes it.
    let mut next = stack.worker_process();
    let all = stack
        .wait_for_events(&pay_ids, Duration::from_secs(60))
        .await;
    signal(&next, "-TERM");
    let _ = next.wait();
    let stats = stack.sim().stats().await;

    assert!(status.success(), "a drained worker exits 0");
    assert!(
        !log.contains("handing it back") && !log.contains("not connected"),
        "no job in hand was handed back: {log}"
    );
    assert!(
        made_before_exit.len() > finished_by_first.len() / 2,
        "the worker had jobs in hand at the SIGTERM: {} subscriptions, {} events",
        made_before_exit.len(),
        finished_by_first.len()
    );
    assert!(
        announced,
        "every job in hand was stored and announced before the exit: {} subscriptions, {} events",
        made_before_exit.len(),
        finished_by_first.len()
    );
    assert!(all, "no job was lost");
    // Not one of them finished again by the next worker (it would announce it a second time).
    let events = stack.events_by_pay_id();
    for pay_id in &pay_ids {
        assert_eq!(events[pay_id].len(), 1, "{pay_id}: {:?}", events[pay_id]);
    }
    assert_eq!(
        subscription_creates(&stats),
        pay_ids.len() as u64,
        "no job's Stripe steps ran twice"
    );
    assert_once_each(&stack, &pay_ids, &stats);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_counts_its_jobs_and_stripe_calls_in_its_metrics() {
    use std::io::BufRead;
    let stack = TestStack::deployment().start().await;
    let mut worker = stack.worker_process_with_stdout();
    let mut line = String::new();
    std::io::BufReader::new(worker.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the banner");
    let probes = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();

    let pay_id = stack.send(|_| {}).await;
    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&pay_id), Duration::from_secs(20))
            .await
    );
    let metrics = reqwest::get(format!("{probes}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    signal(&worker, "-TERM");
    let _ = worker.wait();

    assert!(
        metrics.contains(r#"autorenew_worker_jobs_total{outcome="succeeded"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("autorenew_stripe_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("autorenew_worker_job_duration_seconds_count 1"),
        "{metrics}"
    );
    stack.teardown().await;
}
