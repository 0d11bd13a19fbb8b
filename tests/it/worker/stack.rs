//! A whole deployment for one test: the simulator, an intake, workers (in-process or as child
//! processes of the real binary), and a tap on the results exchange. Its own prefixes.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autorenew::config::Settings;
use autorenew::sim::faults::FaultConfig;
use autorenew::sim::webhooks::EndpointSettings;
use autorenew::sim::{Application as Sim, SimSettings};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    SHARED_AMQP, SHARED_REDIS, TestApp, poll_until, repo_path, test_settings, valid_request,
};

pub const STRIPE_KEY: &str = "sk_test_worker_tests";

pub struct Stack {
    pub intake: TestApp,
    pub settings: Settings,
    pub sim_base: String,
    pub http: reqwest::Client,
    pub events: Arc<Mutex<Vec<Value>>>,
    sim_stop: CancellationToken,
    /// In-process workers: how to stop each, and its task, to wait for.
    workers: Vec<(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    tap_stop: CancellationToken,
    _config_dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
}

/// Settings for fast tests: short retry delays, quick backoff, no budget to speak of.
pub fn fast_settings(sim_base: &str) -> Settings {
    let mut settings = test_settings(SHARED_AMQP, SHARED_REDIS);
    settings.stripe.secret_key = STRIPE_KEY.to_owned().into();
    settings.stripe.api_base = sim_base.to_owned();
    settings.stripe.max_requests_per_second = 100_000;
    settings.stripe.request_timeout_ms = 2_000;
    settings.amqp.retry_delays_ms = vec![300, 600, 900];
    // Jobs parked by an outage come back soon, not in ten minutes.
    settings.amqp.reconcile_delay_ms = 1_000;
    settings.worker.listen = "127.0.0.1:0".into();
    settings.worker.retry_min_delay_ms = 10;
    settings.worker.retry_max_delay_ms = 100;
    settings.worker.step_retries = 3;
    settings.worker.lock_retry_delay_ms = 200;
    settings.worker.lock_ttl_ms = 5_000;
    settings.worker.drain_timeout_secs = 10;
    settings.worker.concurrency = 16;
    settings
}

impl Stack {
    pub async fn start(faults: FaultConfig) -> Stack {
        Self::start_with(faults, |_| {}).await
    }

    pub async fn start_with(faults: FaultConfig, tweak: impl FnOnce(&mut Settings)) -> Stack {
        Self::start_full(faults, false, tweak).await
    }

    /// A stack whose simulator delivers its webhooks, signed, to the stack's intake.
    pub async fn start_with_webhooks(faults: FaultConfig) -> Stack {
        Self::start_full(faults, true, |_| {}).await
    }

    /// Webhooks delivered, and the settings changed by `tweak`.
    pub async fn start_with_webhooks_and(
        faults: FaultConfig,
        tweak: impl FnOnce(&mut Settings),
    ) -> Stack {
        Self::start_full(faults, true, tweak).await
    }

    async fn start_full(
        faults: FaultConfig,
        webhooks: bool,
        tweak: impl FnOnce(&mut Settings),
    ) -> Stack {
        const WEBHOOK_SECRET: &str = "whsec_stack_test";
        // The intake's port is picked first, so the simulator can be told where to deliver.
        let intake_port = crate::helpers::private::free_port();
        let mut sim_settings = SimSettings {
            faults,
            ..SimSettings::for_tests()
        };
        if webhooks {
            sim_settings.webhooks.endpoints.push(EndpointSettings {
                url: format!("http://127.0.0.1:{intake_port}/stripe/webhook"),
                secret: SecretString::from(WEBHOOK_SECRET),
                enabled_events: autorenew::domain::webhook::ACTED_ON
                    .iter()
                    .map(|kind| (*kind).to_owned())
                    .collect(),
            });
        }
        let sim = Sim::build(sim_settings).expect("the simulator starts");
        let sim_base = format!("http://{}", sim.address());
        let sim_stop = CancellationToken::new();
        tokio::spawn(sim.run_until_stopped(sim_stop.clone()));

        let mut settings = fast_settings(&sim_base);
        if webhooks {
            settings.intake.listen = format!("127.0.0.1:{intake_port}");
            settings.stripe.webhook_secrets = vec![SecretString::from(WEBHOOK_SECRET)];
        }
        tweak(&mut settings);
        let (events, tap_stop) = tap_results(&settings.amqp.prefix).await;
        let config_dir = tempfile::tempdir().expect("dir");
        let config_path = config_dir.path().join("config.toml");
        std::fs::write(&config_path, child_config(&settings)).expect("config");
        let intake = TestApp::spawn_with(settings.clone()).await;
        Stack {
            intake,
            settings,
            sim_base,
            http: reqwest::Client::new(),
            events,
            sim_stop,
            workers: Vec::new(),
            tap_stop,
            _config_dir: config_dir,
            config_path,
        }
    }

    /// Starts a worker in this process; stopping its token drains it.
    pub async fn spawn_worker(&mut self) -> CancellationToken {
        self.spawn_worker_at().await.0
    }

    /// As `spawn_worker`, also telling the worker's probe address.
    pub async fn spawn_worker_at(&mut self) -> (CancellationToken, String) {
        let stop = CancellationToken::new();
        let app = autorenew::worker::Application::build(&self.settings)
            .await
            .expect("the worker builds");
        let address = format!("http://{}", app.local_addr());
        let running = tokio::spawn(app.run_until_stopped(stop.clone()));
        self.workers.push((stop.clone(), running));
        (stop, address)
    }

    /// Stops every in-process worker and waits (bounded) until each has exited.
    pub async fn stop_workers(&mut self) {
        for (stop, running) in self.workers.drain(..) {
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(30), running).await;
        }
    }

    /// Starts `autorenew worker` as a child process with this stack's configuration.
    pub fn worker_process(&self) -> Child {
        self.worker_command(Stdio::null())
    }

    /// As `worker_process`, with its stdout (where it prints its probe address) piped.
    pub fn worker_process_with_stdout(&self) -> Child {
        self.worker_command(Stdio::piped())
    }

    /// As `worker_process`, with its stderr (its warnings, the log) piped.
    pub fn worker_process_with_log(&self) -> Child {
        self.worker_command_with(Stdio::null(), Stdio::piped())
    }

    fn worker_command(&self, stdout: Stdio) -> Child {
        self.worker_command_with(stdout, Stdio::inherit())
    }

    fn worker_command_with(&self, stdout: Stdio, stderr: Stdio) -> Child {
        Command::new(env!("CARGO_BIN_EXE_autorenew"))
            .arg("--config")
            .arg(&self.config_path)
            .arg("worker")
            .env(
                "RUST_LOG",
                std::env::var("WORKER_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("autorenew worker starts")
    }

    /// Sends a valid request (changed by `change`) and expects it accepted. Its card is
    /// Stripe's `pm_card_visa` test id, which makes a fresh payment method per attach, so
    /// requests of different customers never share one.
    pub async fn send(&self, change: impl FnOnce(&mut Value)) -> String {
        let mut request = valid_request();
        request["pm_id"] = json!("pm_card_visa");
        change(&mut request);
        let pay_id = request["payId"].as_str().expect("payId").to_owned();
        let answer = self.intake.subscribe(request).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        pay_id
    }

    pub async fn sim_stats(&self) -> Value {
        self.http
            .get(format!("{}/_sim/stats", self.sim_base))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json")
    }

    pub async fn sim_config(&self, patch: Value) {
        let response = self
            .http
            .patch(format!("{}/_sim/config", self.sim_base))
            .json(&patch)
            .send()
            .await
            .expect("config");
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
    }

    /// Queues scripted answers for the next requests to `route` (`POST /v1/subscriptions`).
    pub async fn sim_script(&self, route: &str, answers: Value) {
        let response = self
            .http
            .post(format!("{}/_sim/script", self.sim_base))
            .json(&json!({"route": route, "answers": answers}))
            .send()
            .await
            .expect("script");
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
    }

    /// The events seen so far, by payId.
    pub fn events_by_pay_id(&self) -> HashMap<String, Vec<Value>> {
        let mut by_pay_id: HashMap<String, Vec<Value>> = HashMap::new();
        for event in self.events.lock().expect("events").iter() {
            let pay_id = event["subject"].as_str().unwrap_or_default().to_owned();
            by_pay_id.entry(pay_id).or_default().push(event.clone());
        }
        by_pay_id
    }

    /// Waits (bounded) until every payId has an event.
    pub async fn wait_for_events(&self, pay_ids: &[String], limit: Duration) -> bool {
        poll_until(limit, || async {
            let seen = self.events_by_pay_id();
            pay_ids.iter().all(|p| seen.contains_key(p))
        })
        .await
    }

    /// Sends a request changed by `change` and waits for its subscription: returns the payId
    /// and the `succeeded` event (its `data.sub_id` names the subscription).
    pub async fn subscribed(&self, change: impl FnOnce(&mut Value)) -> (String, Value) {
        let pay_id = self.send(change).await;
        let created = self
            .wait_for_event(
                &pay_id,
                "autorenew.subscription.succeeded",
                Duration::from_secs(20),
            )
            .await
            .expect("the subscription was created");
        (pay_id, created)
    }

    pub async fn result_query(&self, pay_id: &str) -> crate::helpers::Answer {
        let query = json!({"partnerCode": crate::helpers::PARTNER, "payId": pay_id,
                           "tradeType": "resultQuery", "version": "3.0"});
        self.intake
            .post_signed("/resultQuery", query, crate::helpers::SECRET)
            .await
    }

    /// A signed call of the demo partner to `path`.
    pub async fn post_signed(&self, path: &str, body: Value) -> crate::helpers::Answer {
        self.intake
            .post_signed(path, body, crate::helpers::SECRET)
            .await
    }

    /// Waits (bounded) for an event of `kind` (`autorenew.subscription.updated`, …) about
    /// `pay_id`, and returns it.
    pub async fn wait_for_event(&self, pay_id: &str, kind: &str, limit: Duration) -> Option<Value> {
        let found = || {
            self.events_by_pay_id()
                .remove(pay_id)
                .and_then(|events| events.into_iter().find(|e| e["type"] == kind))
        };
        poll_until(limit, || async { found().is_some() }).await;
        found()
    }

    pub async fn teardown(self) {
        for (stop, _) in &self.workers {
            stop.cancel();
        }
        // Wait for them to stop: a worker still running when its queues are deleted sees its
        // consumer cancelled, reconnects and declares them again, and they outlive the test.
        for (_, running) in self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(30), running).await;
        }
        self.tap_stop.cancel();
        self.sim_stop.cancel();
        self.intake.teardown().await;
    }
}

/// A queue of the test's own on the results exchange, collecting every event.
async fn tap_results(prefix: &str) -> (Arc<Mutex<Vec<Value>>>, CancellationToken) {
    let connection = crate::helpers::shared_amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    let exchange = format!("{prefix}.results");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("results exchange");
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("tap queue");
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            "subscription.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "tap".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let events = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let (sink, until) = (events.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = until.cancelled() => break,
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        let _ = delivery.ack(BasicAckOptions::default()).await;
                        let mut event: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
                        event["_routing_key"] = json!(delivery.routing_key.as_str());
                        event["_content_type"] = json!(delivery.properties.content_type().as_ref().map(|c| c.to_string()));
                        sink.lock().expect("events").push(event);
                    }
                    _ => break,
                },
            }
        }
        let _ = connection.close(200, "done".into()).await;
    });
    (events, stop)
}

/// The stack's settings as a config file for child worker processes.
fn child_config(settings: &Settings) -> String {
    use secrecy::ExposeSecret;
    let delays: Vec<String> = settings
        .amqp
        .retry_delays_ms
        .iter()
        .map(u64::to_string)
        .collect();
    let template = std::fs::read_to_string(repo_path("config.toml")).expect("config.toml");
    // Keep the repo's partners, replace everything a worker reads.
    let partners = template
        .find("[[partners]]")
        .map(|at| template[at..].to_owned())
        .unwrap_or_default();
    format!(
        r#"[amqp]
url = "{amqp}"
prefix = "{prefix}"
retry_delays_ms = [{delays}]
reconcile_delay_ms = {reconcile}

[redis]
url = "{redis}"
key_prefix = "{key_prefix}"

[worker]
concurrency = {concurrency}
listen = "127.0.0.1:0"
step_retries = {step_retries}
retry_min_delay_ms = {min}
retry_max_delay_ms = {max}
lock_ttl_ms = {lock_ttl}
lock_retry_delay_ms = {lock_retry}
drain_timeout_secs = {drain}

[stripe]
secret_key = "{key}"
api_base = "{api_base}"
max_requests_per_second = {rate}
request_timeout_ms = {timeout}

{partners}"#,
        amqp = settings.amqp.url.expose_secret(),
        prefix = settings.amqp.prefix,
        delays = delays.join(", "),
        reconcile = settings.amqp.reconcile_delay_ms,
        redis = settings.redis.url.expose_secret(),
        key_prefix = settings.redis.key_prefix,
        concurrency = settings.worker.concurrency,
        step_retries = settings.worker.step_retries,
        min = settings.worker.retry_min_delay_ms,
        max = settings.worker.retry_max_delay_ms,
        lock_ttl = settings.worker.lock_ttl_ms,
        lock_retry = settings.worker.lock_retry_delay_ms,
        drain = settings.worker.drain_timeout_secs,
        key = settings.stripe.secret_key.expose_secret(),
        api_base = settings.stripe.api_base,
        rate = settings.stripe.max_requests_per_second,
        timeout = settings.stripe.request_timeout_ms,
    )
}

/// How many subscription creates the simulator answered (replays of an idempotency key too):
/// one per job when no job's Stripe steps ran twice.
pub fn subscription_creates(stats: &Value) -> u64 {
    stats["requests"]["POST /v1/subscriptions"]
        .as_object()
        .map_or(0, |by_status| {
            by_status.values().filter_map(Value::as_u64).sum()
        })
}

/// Subscriptions per payId in the simulator.
pub fn subscriptions_by_pay_id(stats: &Value) -> HashMap<String, u64> {
    stats["subscriptions_by_pay_id"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}
