//! The chaos run (docs/design.md, "Against the real services"): a private RabbitMQ and Redis, a faulty simulator, the
//! intake and two worker processes, loadgen driving 2,000 jobs; meanwhile a worker is killed
//! twice, RabbitMQ restarts once and Redis restarts once. Afterwards every promise is checked
//! and printed as a table:
//! - every request answered `S` has exactly one final result in Redis and one result event;
//! - no payId has two subscriptions in the simulator;
//! - nothing is stuck in the jobs or retry queues; each dead letter is explained;
//! - requests made while the broker was down got a 503, never an `S` that was then lost.

// The integration tests' helpers: this run uses a few of them, not their `TestStack`.
#[path = "../it/helpers/mod.rs"]
#[allow(dead_code, unused_imports)]
mod helpers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autorenew::broker::Topology;
use autorenew::config::Settings;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;
use stripe_sim::faults::FaultConfig;
use stripe_sim::{Application as Sim, SimSettings};
use tokio_util::sync::CancellationToken;

use helpers::private::{PrivateRabbit, PrivateRedis, free_port};
use helpers::{poll_until, repo_path};

/// Requests sent; about half of the sending time has the broker away, so a bit over 2,000 of
/// them become jobs.
const REQUESTS: u64 = 5_000;
const RATE: u64 = 200;
/// Requests sent once the faults are over (at this many a second, so in about one second).
const AFTER: u64 = 100;

struct Service {
    config: std::path::PathBuf,
    intake: Child,
    intake_url: String,
    workers: Vec<Child>,
}

fn spawn(config: &std::path::Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_autorenew"))
        .arg("--config")
        .arg(config)
        .args(args)
        // Thousands of injected faults would each log a retry: errors only.
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("autorenew starts")
}

fn kill(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let _ = child.wait();
}

impl Service {
    fn start(config: std::path::PathBuf, intake_port: u16) -> Service {
        let mut intake = spawn(&config, &["intake"]);
        // The intake prints its address once bound.
        let mut line = String::new();
        let mut out = std::io::BufReader::new(intake.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("listening line");
        assert!(line.contains(&intake_port.to_string()), "{line}");
        let workers = vec![spawn(&config, &["worker"]), spawn(&config, &["worker"])];
        Service {
            config,
            intake,
            intake_url: format!("http://127.0.0.1:{intake_port}"),
            workers,
        }
    }

    fn kill_worker(&mut self, index: usize) {
        kill(&mut self.workers[index], "-KILL");
        self.workers[index] = spawn(&self.config, &["worker"]);
    }

    fn stop(&mut self) {
        for worker in &mut self.workers {
            kill(worker, "-TERM");
        }
        kill(&mut self.intake, "-TERM");
    }
}

fn write_config(
    dir: &std::path::Path,
    rabbit: &str,
    redis: &str,
    sim: &str,
    intake_port: u16,
) -> std::path::PathBuf {
    let template = std::fs::read_to_string(repo_path("config.toml")).expect("config.toml");
    let partners = template
        .find("[[partners]]")
        .map(|at| template[at..].to_owned())
        .unwrap_or_default();
    let text = format!(
        r#"[intake]
listen = "127.0.0.1:{intake_port}"
partner_rate_limit_per_second = 0

[amqp]
url = "{rabbit}"
prefix = "chaos"
retry_delays_ms = [1000, 2000, 4000, 8000, 15000]
# Jobs whose retries are spent during an outage are parked, not failed: back every 5 s.
reconcile_delay_ms = 5000

[redis]
url = "{redis}"
key_prefix = "chaos"

[worker]
concurrency = 32
listen = "127.0.0.1:0"
step_retries = 4
retry_min_delay_ms = 20
retry_max_delay_ms = 300
lock_ttl_ms = 5000
lock_retry_delay_ms = 500
drain_timeout_secs = 10

[stripe]
secret_key = "sk_test_chaos"
api_base = "{sim}"
max_requests_per_second = 100000
request_timeout_ms = 1500

{partners}"#
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// A durable quorum queue on the results exchange: events survive the broker's restart.
async fn declare_tap(url: &str) {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            "chaos.results".into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    channel
        .queue_declare(
            "chaos.tap".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("tap");
    channel
        .queue_bind(
            "chaos.tap".into(),
            "chaos.results".into(),
            "subscription.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let _ = connection.close(200, "done".into()).await;
}

/// Every event in the tap, drained until it stays quiet.
async fn drain_tap(url: &str) -> Vec<Value> {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.expect("channel");
    let mut consumer = channel
        .basic_consume(
            "chaos.tap".into(),
            "checker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut events = Vec::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(3), consumer.next()).await
    {
        let _ = delivery.ack(BasicAckOptions::default()).await;
        events.push(serde_json::from_slice(&delivery.data).unwrap_or(Value::Null));
    }
    let _ = connection.close(200, "done".into()).await;
    events
}

/// Messages waiting in a queue (passive declare).
async fn depth(url: &str, queue: &str) -> u32 {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.expect("channel");
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = connection.close(200, "done".into()).await;
    declared.map(|q| q.message_count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_keeps_every_promise() {
    let started = Instant::now();
    let mut rabbit = tokio::task::spawn_blocking(PrivateRabbit::start)
        .await
        .expect("rabbit");
    let mut redis = PrivateRedis::start_persistent();
    let sim = Sim::build(SimSettings {
        faults: FaultConfig {
            error_rate: 0.20,
            saved_error_rate: 0.01,
            rate_limit_error_rate: 0.10,
            lost_response_rate: 0.05,
            ..FaultConfig::default()
        },
        ..SimSettings::laptop()
    })
    .expect("simulator");
    let sim_url = format!("http://{}", sim.address());
    let sim_stop = CancellationToken::new();
    tokio::spawn(sim.run_until_stopped(sim_stop.clone()));

    let dir = tempfile::tempdir().expect("dir");
    let intake_port = free_port();
    let config = write_config(
        dir.path(),
        &rabbit.url(),
        &redis.url(),
        &sim_url,
        intake_port,
    );
    declare_tap(&rabbit.url()).await;
    let mut service = Service::start(config.clone(), intake_port);
    let client = reqwest::Client::new();
    assert!(
        poll_until(Duration::from_secs(30), || async {
            client
                .get(format!("{}/readyz", service.intake_url))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    );

    // The load: the real loadgen, open loop, recording every answer.
    let record = dir.path().join("answers.jsonl");
    let loadgen = start_loadgen(&config, &service.intake_url, REQUESTS, RATE, &record);

    // The faults, spread over the ~17 s of sending.
    let pause = |secs| tokio::time::sleep(Duration::from_secs(secs));
    pause(3).await;
    service.kill_worker(0);
    pause(2).await;
    let broker_down_at = Instant::now();
    rabbit = tokio::task::spawn_blocking(move || {
        rabbit.stop();
        rabbit
    })
    .await
    .expect("stop rabbit");
    pause(2).await;
    rabbit = tokio::task::spawn_blocking(move || {
        rabbit.boot();
        rabbit
    })
    .await
    .expect("boot rabbit");
    let broker_down_for = broker_down_at.elapsed();
    pause(2).await;
    service.kill_worker(1);
    pause(2).await;
    redis.stop();
    pause(1).await;
    redis.boot();

    let output = tokio::task::spawn_blocking(move || loadgen.wait_with_output())
        .await
        .expect("join")
        .expect("loadgen ran");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);

    // Every answer loadgen got.
    let answers = read_answers(&record);
    let accepted_during = accepted_pay_ids(&answers).len();

    // What a partner does with the 503s: it tries again once the service is back. On a loaded
    // machine the broker can stay away past the end of the load, so the service's recovery is
    // checked with a batch of its own rather than with the tail of the first.
    let back = poll_until(Duration::from_secs(90), || async {
        client
            .get(format!("{}/readyz", service.intake_url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(back, "the intake is ready again after the outages");
    let record_after = dir.path().join("answers-after.jsonl");
    let after = start_loadgen(&config, &service.intake_url, AFTER, AFTER, &record_after);
    tokio::task::spawn_blocking(move || after.wait_with_output())
        .await
        .expect("join")
        .expect("loadgen ran");
    let answers_after = read_answers(&record_after);
    let accepted_after = accepted_pay_ids(&answers_after).len();
    let accepted: HashSet<String> = accepted_pay_ids(&answers)
        .into_iter()
        .chain(accepted_pay_ids(&answers_after))
        .collect();
    let mut answer_codes: BTreeMap<String, u64> = BTreeMap::new();
    for answer in &answers {
        let key = format!(
            "{} {}",
            answer["status"],
            answer["code"].as_str().unwrap_or("-")
        );
        *answer_codes.entry(key).or_default() += 1;
    }

    // Wait until every accepted payId has a final result (bounded).
    let store =
        autorenew::store::Store::new(&Settings::load(Some(&config)).expect("settings").redis)
            .expect("store");
    let all_final = poll_until(Duration::from_secs(240), || async {
        let mut done = true;
        for pay_id in &accepted {
            let id = demo_pay_key(pay_id);
            if !matches!(store.result(&id).await, Ok(Some(_))) {
                done = false;
                break;
            }
        }
        done
    })
    .await;
    // Copies of settled jobs (redeliveries, retries queued before a result was stored) drain
    // through the workers: wait for the queues to empty before stopping them.
    let settings = Settings::load(Some(&config)).expect("settings");
    let topology = Topology::from_settings(&settings);
    // The shared queue, every partner's lane, the expired jobs, and the delays.
    let mut queues = topology.work_queues();
    queues.push(topology.lock_retry_queue());
    queues.extend(topology.retry_queues().into_iter().map(|(_, q)| q));
    let drained = poll_until(Duration::from_secs(60), || async {
        let mut total = 0;
        for queue in &queues {
            total += depth(&rabbit.url(), queue).await;
        }
        total == 0
    })
    .await;
    service.stop();

    let mut results = HashMap::new();
    for pay_id in &accepted {
        let id = demo_pay_key(pay_id);
        if let Ok(Some(result)) = store.result(&id).await {
            results.insert(pay_id.clone(), result);
        }
    }
    let events = drain_tap(&rabbit.url()).await;
    let mut event_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for event in &events {
        if let (Some(subject), Some(id)) = (event["subject"].as_str(), event["id"].as_str()) {
            event_ids
                .entry(subject.to_owned())
                .or_default()
                .insert(id.to_owned());
        }
    }
    let stats: Value = client
        .get(format!("{sim_url}/_sim/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    let subscriptions: HashMap<String, u64> = stats["subscriptions_by_pay_id"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let mut stuck = 0;
    for queue in &queues {
        stuck += depth(&rabbit.url(), queue).await;
    }
    let dead = autorenew::dlq::list(&settings, 10_000, CancellationToken::new())
        .await
        .expect("dlq list");
    let unexplained_dead: Vec<_> = dead
        .iter()
        .filter(|letter| {
            // A job whose retries were spent is explained by its stored STRIPE_UNAVAILABLE result.
            let explained = letter.reason == "retries spent"
                && letter
                    .pay_id
                    .as_ref()
                    .and_then(|p| results.get(p))
                    .is_some_and(|r| {
                        r.error.as_ref().is_some_and(|e| {
                            e.code == autorenew::domain::FailureCode::StripeUnavailable
                        })
                    });
            !explained
        })
        .collect();

    let without_result: Vec<_> = accepted
        .iter()
        .filter(|p| !results.contains_key(*p))
        .collect();
    let without_event: Vec<_> = accepted
        .iter()
        .filter(|p| !event_ids.contains_key(*p))
        .collect();
    let several_outcomes: Vec<_> = event_ids.iter().filter(|(_, ids)| ids.len() > 1).collect();
    let twice: Vec<_> = subscriptions.iter().filter(|(_, n)| **n > 1).collect();
    let succeeded_without_subscription: Vec<_> = results
        .iter()
        .filter(|(p, r)| !r.is_failed() && subscriptions.get(*p) != Some(&1))
        .collect();
    let failed = results.values().filter(|r| r.is_failed()).count();
    let unavailable_503 = answers.iter().filter(|a| a["status"] == 503).count();

    println!(
        "\nchaos run: {:.0} s, broker down for {:.1} s",
        started.elapsed().as_secs_f64(),
        broker_down_for.as_secs_f64()
    );
    println!("| check | value | expected |");
    println!("|---|---|---|");
    println!("| requests sent | {} | {REQUESTS} |", answers.len());
    println!("| answered S during the faults | {accepted_during} | > 0 |");
    println!("| answered S after them | {accepted_after} | {AFTER} |");
    println!("| answered 503 (broker/Redis away) | {unavailable_503} | > 0 |");
    for (code, count) in &answer_codes {
        println!("| answers `{code}` | {count} | |");
    }
    println!(
        "| S without a final result | {} | 0 |",
        without_result.len()
    );
    println!("| S without a result event | {} | 0 |", without_event.len());
    println!(
        "| payIds with two outcomes | {} | 0 |",
        several_outcomes.len()
    );
    println!("| payIds with two subscriptions | {} | 0 |", twice.len());
    println!(
        "| succeeded without its subscription | {} | 0 |",
        succeeded_without_subscription.len()
    );
    println!("| jobs ended failed | {failed} | |");
    println!(
        "| events received (with redeliveries) | {} | |",
        events.len()
    );
    println!("| messages left in jobs/retry queues | {stuck} | 0 |");
    println!("| dead letters | {} | explained |", dead.len());
    println!(
        "| dead letters unexplained | {} | 0 |",
        unexplained_dead.len()
    );
    println!("| simulator faults | {} | |", stats["faults"]);
    println!("| loadgen report failures | {} | |", report["failures"]);

    sim_stop.cancel();
    tokio::task::spawn_blocking(move || drop(rabbit))
        .await
        .expect("stop rabbit");
    drop(redis);

    assert_eq!(
        answers.len() as u64,
        REQUESTS,
        "loadgen recorded every answer"
    );
    assert!(
        all_final,
        "every accepted job reached a final result: {without_result:?}"
    );
    assert!(without_result.is_empty());
    assert!(without_event.is_empty(), "{without_event:?}");
    assert!(several_outcomes.is_empty(), "{several_outcomes:?}");
    assert!(twice.is_empty(), "{twice:?}");
    assert!(succeeded_without_subscription.is_empty());
    assert!(
        drained && stuck == 0,
        "{stuck} messages stuck in {queues:?}"
    );
    assert!(unexplained_dead.is_empty(), "{unexplained_dead:?}");
    assert!(unavailable_503 > 0, "the broker outage was seen as 503s");
    assert!(
        accepted_during > 0,
        "requests were accepted while the faults ran"
    );
    assert_eq!(
        accepted_after as u64, AFTER,
        "every request sent after the outages was accepted: {answers_after:?}"
    );
}

/// A payId of the demo partner that loadgen signs for (`config.toml`'s first).
fn demo_pay_key(pay_id: &str) -> autorenew::domain::PayKey {
    autorenew::domain::PayKey::new(
        autorenew::domain::PartnerCode::parse("P000818").expect("partner code"),
        autorenew::domain::PayId::parse(pay_id).expect("payId"),
    )
}

/// Starts the real loadgen, open loop, recording every answer to `record`.
fn start_loadgen(
    config: &std::path::Path,
    target: &str,
    requests: u64,
    rate: u64,
    record: &std::path::Path,
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_autorenew"))
        .arg("--config")
        .arg(config)
        .args(["loadgen", "--no-follow", "--quiet", "--json"])
        .args([
            "--rate",
            &rate.to_string(),
            "--requests",
            &requests.to_string(),
        ])
        .args(["--request-timeout", "5s", "--target", target])
        .arg("--record")
        .arg(record)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("loadgen starts")
}

/// The answers a loadgen run recorded, one JSON object a line.
fn read_answers(record: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(record)
        .expect("the record")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The payIds answered `200 S`.
fn accepted_pay_ids(answers: &[Value]) -> HashSet<String> {
    answers
        .iter()
        .filter(|a| a["status"] == 200 && a["code"] == "S")
        .filter_map(|a| a["payId"].as_str().map(str::to_owned))
        .collect()
}

/// Connects to the test's broker, failing (not hanging) if it never answers the handshake.
async fn connect(url: &str) -> lapin::Connection {
    tokio::time::timeout(
        Duration::from_secs(10),
        lapin::Connection::connect(url, Default::default()),
    )
    .await
    .expect("RabbitMQ answers the AMQP handshake within 10 s")
    .expect("connect")
}
