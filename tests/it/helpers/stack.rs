//! The one way a test starts what it needs of a deployment: `TestStack::builder()`, the parts
//! the test asks for, then `start()`. Every part is optional:
//!
//! - `.simulator(faults)` (or `.simulator_settings(…)`): the Stripe simulator, with the stack's
//!   Stripe settings pointed at it and every retry delay shortened to fit in a test;
//! - `.webhooks()`: the simulator delivers its webhooks, signed, to the stack's intake;
//! - `.intake()`: the intake on its own port, ready;
//! - `.workers(n)`: `n` workers in this process (`spawn_worker` starts more later, and
//!   `worker_process` starts the real binary as a child process);
//! - `.tap()`: a queue of the test's own on the results exchange, collecting every event;
//! - `.push_receiver()`: a receiver that both test partners push to (see `push.rs`);
//! - `.settings(|s| …)`: changes to the settings, made after the parts have set theirs;
//! - `.amqp_url(…)`, `.redis_url(…)`: a private broker or Redis instead of the shared ones.
//!
//! Two shorthands name the usual sets: `TestStack::simulator_only()` (the simulator's own tests)
//! and `TestStack::deployment()` (simulator, intake and tap: the worker's tests, which add
//! `.workers(1)`, `.webhooks()`, faults or settings to it).
//!
//! A stack has its own queue prefix and Redis key prefix, and writes its settings to a config
//! file for the child processes it starts. An accessor on a part that was not asked for panics
//! with the builder method to call. `teardown` stops what runs and deletes the stack's queues,
//! exchanges and keys on the shared broker and Redis. A stack dropped without it (its test
//! failed) deletes them too, and a stack of the simulator alone declares none, so dropping it is
//! enough.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use autorenew::broker::Topology;
use autorenew::config::Settings;
use autorenew::store::Store;
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use stripe_sim::SimSettings;
use stripe_sim::faults::FaultConfig;
use stripe_sim::webhooks::EndpointSettings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::intake::TestApp;
use super::private::free_port;
use super::push::PushReceiver;
use super::sim::TestSim;
use super::{
    Answer, ChildGuard, PARTNER, SECRET, SHARED_AMQP, SHARED_REDIS, delete_keys, delete_topology,
    poll_until, shared_amqp, test_settings, valid_request,
};

/// The Stripe key the stack's workers and intake use with the simulator.
const STRIPE_KEY: &str = "sk_test_worker_tests";

/// How many times `send` sends a request again after a 503, as a partner retries.
const PARTNER_RETRIES: u64 = 5;

/// The secret the simulator signs its webhooks with when `.webhooks()` is asked for.
const WEBHOOK_SECRET: &str = "whsec_stack_test";

/// A change to the settings, given to `TestStackBuilder::settings`.
type Tweak<'a> = Box<dyn FnOnce(&mut Settings) + 'a>;

/// What a test asks for; `start` starts it.
pub struct TestStackBuilder<'a> {
    amqp_url: String,
    redis_url: String,
    simulator: Option<SimSettings>,
    webhooks: bool,
    intake: bool,
    workers: usize,
    tap: bool,
    push_receiver: bool,
    tweaks: Vec<Tweak<'a>>,
}

impl<'a> TestStackBuilder<'a> {
    /// The simulator with these faults (`FaultConfig::default()`: none).
    pub fn simulator(self, faults: FaultConfig) -> Self {
        self.simulator_settings(SimSettings {
            faults,
            ..SimSettings::laptop()
        })
    }

    /// The simulator with settings of the test's own (its webhook endpoints, say).
    pub fn simulator_settings(mut self, settings: SimSettings) -> Self {
        self.simulator = Some(settings);
        self
    }

    /// The simulator delivers its webhooks, signed, to the intake (both must be asked for).
    pub fn webhooks(mut self) -> Self {
        self.webhooks = true;
        self
    }

    pub fn intake(mut self) -> Self {
        self.intake = true;
        self
    }

    /// `count` workers in this process, started once the intake is ready.
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = count;
        self
    }

    /// A queue on the results exchange collecting every event, for `wait_for_event` and kin.
    pub fn tap(mut self) -> Self {
        self.tap = true;
        self
    }

    /// A receiver that both test partners push to, with short retries and quick timeouts.
    pub fn push_receiver(mut self) -> Self {
        self.push_receiver = true;
        self
    }

    /// Changes the settings after the parts have set theirs; may be called more than once.
    pub fn settings(mut self, tweak: impl FnOnce(&mut Settings) + 'a) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// A broker other than the shared one (a private node a test stops and restarts).
    pub fn amqp_url(mut self, url: &str) -> Self {
        self.amqp_url = url.to_owned();
        self
    }

    /// A Redis other than the shared one.
    pub fn redis_url(mut self, url: &str) -> Self {
        self.redis_url = url.to_owned();
        self
    }

    pub async fn start(self) -> TestStack {
        assert!(
            !self.webhooks || (self.simulator.is_some() && self.intake),
            "webhooks go from the simulator to the intake: call `.simulator(…)` and `.intake()` too"
        );
        let mut settings = test_settings(&self.amqp_url, &self.redis_url);
        // The intake's port is picked first, so the simulator can be told where to deliver.
        let webhook_port = self.webhooks.then(free_port);
        let sim = self.simulator.map(|mut sim_settings| {
            if let Some(port) = webhook_port {
                sim_settings.webhooks.endpoints.push(EndpointSettings {
                    url: format!("http://127.0.0.1:{port}/stripe/webhook"),
                    secret: SecretString::from(WEBHOOK_SECRET),
                    enabled_events: autorenew::domain::webhook::ACTED_ON
                        .iter()
                        .map(|kind| (*kind).to_owned())
                        .collect(),
                });
            }
            TestSim::start(sim_settings)
        });
        if let Some(sim) = &sim {
            use_simulator(&mut settings, &sim.base);
        }
        if let Some(port) = webhook_port {
            settings.intake.listen = format!("127.0.0.1:{port}");
            settings.stripe.webhook_secrets = vec![SecretString::from(WEBHOOK_SECRET)];
        }
        let push = if self.push_receiver {
            Some(PushReceiver::start().await)
        } else {
            None
        };
        if let Some(push) = &push {
            push.point_partners(&mut settings);
        }
        for tweak in self.tweaks {
            tweak(&mut settings);
        }
        if push.is_some() {
            // The push's tests are about its settings: catch one the loader would refuse.
            settings.check().expect("the test settings are valid");
        }
        let tap = if self.tap {
            Some(Tap::start(&settings.amqp.prefix).await)
        } else {
            None
        };
        let config_dir = tempfile::tempdir().expect("a temp dir for the config file");
        let config_path = config_dir.path().join("config.toml");
        std::fs::write(&config_path, config_file(&settings)).expect("the config file");
        let intake = if self.intake {
            Some(TestApp::start(settings.clone()).await)
        } else {
            None
        };
        let mut stack = TestStack {
            settings,
            config_path,
            sim,
            intake,
            tap,
            push,
            notifiers: Vec::new(),
            workers: Vec::new(),
            store: OnceLock::new(),
            _config_dir: config_dir,
            torn_down: false,
            touched_shared: AtomicBool::new(self.intake || self.tap || self.push_receiver),
        };
        for _ in 0..self.workers {
            stack.spawn_worker().await;
        }
        stack
    }
}

/// A worker in this process: how to stop it, and its task, to wait for.
type RunningWorker = (CancellationToken, JoinHandle<anyhow::Result<()>>);

/// A started stack: the parts asked for, its settings and its config file.
pub struct TestStack {
    pub settings: Settings,
    /// The settings as a config file, for child processes (`autorenew --config …`).
    pub config_path: PathBuf,
    sim: Option<TestSim>,
    intake: Option<TestApp>,
    tap: Option<Tap>,
    pub(super) push: Option<PushReceiver>,
    /// Notifiers started in this process, stopped by `teardown`.
    pub(super) notifiers: Vec<CancellationToken>,
    workers: Vec<RunningWorker>,
    store: OnceLock<Store>,
    _config_dir: tempfile::TempDir,
    /// Set by `teardown`; without it, dropping the stack deletes what it declared.
    torn_down: bool,
    /// Whether a part may have declared queues or written keys on the broker and Redis: any
    /// part but the simulator, the store, a worker or a command started (set where they start).
    touched_shared: AtomicBool,
}

impl TestStack {
    /// The simulator alone, without faults: `builder().simulator(FaultConfig::default())`.
    pub fn simulator_only<'a>() -> TestStackBuilder<'a> {
        Self::builder().simulator(FaultConfig::default())
    }

    /// What the worker's tests start: the simulator without faults (`.simulator(…)` gives it
    /// some), the intake and the tap; `.workers(n)`, `.webhooks()` and the rest add to it.
    pub fn deployment<'a>() -> TestStackBuilder<'a> {
        Self::simulator_only().intake().tap()
    }

    pub fn builder<'a>() -> TestStackBuilder<'a> {
        TestStackBuilder {
            amqp_url: SHARED_AMQP.to_owned(),
            redis_url: SHARED_REDIS.to_owned(),
            simulator: None,
            webhooks: false,
            intake: false,
            workers: 0,
            tap: false,
            push_receiver: false,
            tweaks: Vec::new(),
        }
    }

    pub fn sim(&self) -> &TestSim {
        self.sim
            .as_ref()
            .expect("this stack has no simulator: call `.simulator(…)` on its builder")
    }

    pub fn intake(&self) -> &TestApp {
        self.intake
            .as_ref()
            .expect("this stack has no intake: call `.intake()` on its builder")
    }

    fn tap(&self) -> &Tap {
        self.tap
            .as_ref()
            .expect("this stack has no tap on the results: call `.tap()` on its builder")
    }

    /// The store on the stack's Redis keys, made on first use.
    pub fn store(&self) -> &Store {
        self.touched_shared.store(true, Ordering::Relaxed);
        self.store
            .get_or_init(|| Store::new(&self.settings.redis).expect("the store opens"))
    }

    /// Starts a worker in this process; stopping its token drains it.
    pub async fn spawn_worker(&mut self) -> CancellationToken {
        self.spawn_worker_at().await.0
    }

    /// As `spawn_worker`, also telling the worker's probe address.
    pub async fn spawn_worker_at(&mut self) -> (CancellationToken, String) {
        self.touched_shared.store(true, Ordering::Relaxed);
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
        stop_and_wait(self.workers.drain(..)).await;
    }

    /// Starts `autorenew worker` as a child process with this stack's configuration (killed
    /// when dropped).
    pub fn worker_process(&self) -> ChildGuard {
        self.worker_command(Stdio::null(), Stdio::inherit())
    }

    /// As `worker_process`, with its stdout (where it prints its probe address) piped.
    pub fn worker_process_with_stdout(&self) -> ChildGuard {
        self.worker_command(Stdio::piped(), Stdio::inherit())
    }

    /// As `worker_process`, with its stderr (its warnings, the log) piped.
    pub fn worker_process_with_log(&self) -> ChildGuard {
        self.worker_command(Stdio::null(), Stdio::piped())
    }

    fn worker_command(&self, stdout: Stdio, stderr: Stdio) -> ChildGuard {
        let child = self
            .autorenew(&["worker"])
            .env(
                "RUST_LOG",
                std::env::var("WORKER_LOG").unwrap_or("warn".into()),
            )
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("autorenew worker starts");
        ChildGuard(child)
    }

    /// `autorenew --config <this stack's config file> ARGS`, logging warnings only, with no
    /// stdin: the real binary, as an operator runs it against this stack.
    pub fn autorenew(&self, args: &[&str]) -> Command {
        self.touched_shared.store(true, Ordering::Relaxed);
        let mut command = Command::new(env!("CARGO_BIN_EXE_autorenew"));
        command
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        command
    }

    /// Sends a valid request (changed by `change`) and expects it accepted. Its card is
    /// Stripe's `pm_card_visa` test id, which makes a fresh payment method per attach, so
    /// requests of different customers never share one.
    ///
    /// A 503 is sent again, as a partner does (docs/partners.md: retry after `Retry-After`,
    /// with the same payId and content): hundreds of requests at once can meet Redis slower
    /// than the intake's store timeout on a loaded machine (`STORE_UNAVAILABLE`), which is the
    /// intake keeping its promise, not a failure of what the caller tests.
    pub async fn send(&self, change: impl FnOnce(&mut Value)) -> String {
        let mut request = valid_request();
        request["pm_id"] = json!("pm_card_visa");
        change(&mut request);
        let pay_id = request["payId"].as_str().expect("payId").to_owned();
        let mut answer = self.intake().subscribe(request.clone()).await;
        for retry in 1..=PARTNER_RETRIES {
            if answer.status != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(retry)).await;
            answer = self.intake().subscribe(request.clone()).await;
        }
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        pay_id
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

    pub async fn result_query(&self, pay_id: &str) -> Answer {
        let query = json!({"partnerCode": PARTNER, "payId": pay_id,
                           "tradeType": "resultQuery", "version": "3.0"});
        self.post_signed("/resultQuery", query).await
    }

    /// A signed call of the demo partner to `path`.
    pub async fn post_signed(&self, path: &str, body: Value) -> Answer {
        self.intake().post_signed(path, body, SECRET).await
    }

    /// Every event the tap has seen so far.
    pub fn events(&self) -> &Mutex<Vec<Value>> {
        &self.tap().events
    }

    /// The events seen so far, by payId.
    pub fn events_by_pay_id(&self) -> HashMap<String, Vec<Value>> {
        let mut by_pay_id: HashMap<String, Vec<Value>> = HashMap::new();
        for event in self.events().lock().expect("events").iter() {
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

    /// Stops every part, then deletes the stack's queues, exchanges and keys.
    pub async fn teardown(mut self) {
        // Workers first, waited for: a worker still running when its queues are deleted sees
        // its consumer cancelled, reconnects and declares them again, and they outlive the test.
        stop_and_wait(std::mem::take(&mut self.workers)).await;
        self.stop_parts();
        self.sim = None;
        delete_topology(&Topology::from_settings(&self.settings)).await;
        delete_keys(
            self.settings.redis.url.expose_secret(),
            &self.settings.redis.key_prefix,
        )
        .await;
        self.torn_down = true;
    }

    /// Tells every part but the simulator to stop.
    fn stop_parts(&self) {
        for (stop, _) in &self.workers {
            stop.cancel();
        }
        for notifier in &self.notifiers {
            notifier.cancel();
        }
        if let Some(tap) = &self.tap {
            tap.stop.cancel();
        }
        if let Some(push) = &self.push {
            push.stop();
        }
        if let Some(intake) = &self.intake {
            intake.stop();
        }
    }
}

/// A stack dropped without `teardown` (its test panicked, or returned early) still deletes its
/// queues, exchanges and keys, so a failed test leaves nothing on the shared broker for the
/// next run to trip over. The test's runtime is unwinding or busy, so the deleting runs on a
/// thread and runtime of its own, bounded in time; workers of this process cannot declare
/// their queues again meanwhile, as the test's runtime does not run them while it waits here.
impl Drop for TestStack {
    fn drop(&mut self) {
        if self.torn_down || !self.touched_shared.load(Ordering::Relaxed) {
            return;
        }
        self.stop_parts();
        let topology = Topology::from_settings(&self.settings);
        let redis_url = self.settings.redis.url.expose_secret().to_owned();
        let key_prefix = self.settings.redis.key_prefix.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let delete = async {
                    delete_topology(&topology).await;
                    delete_keys(&redis_url, &key_prefix).await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(30), delete).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Stops these workers, then waits (bounded) until each has exited.
async fn stop_and_wait(workers: impl IntoIterator<Item = RunningWorker>) {
    let workers: Vec<RunningWorker> = workers.into_iter().collect();
    for (stop, _) in &workers {
        stop.cancel();
    }
    for (_, running) in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), running).await;
    }
}

/// Points the Stripe settings at the simulator and shortens every delay, so retries, backoff
/// and parked jobs come back within a test; the rate budget is out of the way.
fn use_simulator(settings: &mut Settings, sim_base: &str) {
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
}

/// A queue of the test's own on the results exchange, collecting every event.
struct Tap {
    events: Arc<Mutex<Vec<Value>>>,
    stop: CancellationToken,
}

impl Tap {
    async fn start(prefix: &str) -> Tap {
        let connection = shared_amqp().await;
        let channel = connection.create_channel().await.expect("channel");
        let exchange = format!("{prefix}.results");
        let mut consumer = autorenew::events::tap(&channel, &exchange, "subscription.#", "tap")
            .await
            .expect("a tap on the results exchange");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (sink, until) = (events.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = until.cancelled() => break,
                    delivery = consumer.next() => match delivery {
                        Some(Ok(delivery)) => {
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
        Tap { events, stop }
    }
}

/// The settings as a config file for child processes (workers, notifiers, the operator's
/// commands): everything they read, the partners and their pushes included.
fn config_file(settings: &Settings) -> String {
    let (amqp, redis, worker, stripe, push) = (
        &settings.amqp,
        &settings.redis,
        &settings.worker,
        &settings.stripe,
        &settings.push,
    );
    let delays: Vec<String> = amqp.retry_delays_ms.iter().map(u64::to_string).collect();
    let mut text = format!(
        r#"[amqp]
url = "{amqp_url}"
prefix = "{prefix}"
retry_delays_ms = [{delays}]
reconcile_delay_ms = {reconcile}

[redis]
url = "{redis_url}"
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

[push]
listen = "127.0.0.1:0"
timeout_secs = {push_timeout}
connect_timeout_secs = {connect_timeout}
retry_schedule_secs = {schedule:?}
breaker_failures = {breaker_failures}
breaker_cooldown_secs = {cooldown}
breaker_cooldown_max_secs = {cooldown_max}
allow_http = {allow_http}
allow_private_networks = {allow_private}

"#,
        amqp_url = amqp.url.expose_secret(),
        prefix = amqp.prefix,
        delays = delays.join(", "),
        reconcile = amqp.reconcile_delay_ms,
        redis_url = redis.url.expose_secret(),
        key_prefix = redis.key_prefix,
        concurrency = worker.concurrency,
        step_retries = worker.step_retries,
        min = worker.retry_min_delay_ms,
        max = worker.retry_max_delay_ms,
        lock_ttl = worker.lock_ttl_ms,
        lock_retry = worker.lock_retry_delay_ms,
        drain = worker.drain_timeout_secs,
        key = stripe.secret_key.expose_secret(),
        api_base = stripe.api_base,
        rate = stripe.max_requests_per_second,
        timeout = stripe.request_timeout_ms,
        push_timeout = push.timeout_secs,
        connect_timeout = push.connect_timeout_secs,
        schedule = push.retry_schedule_secs,
        breaker_failures = push.breaker_failures,
        cooldown = push.breaker_cooldown_secs,
        cooldown_max = push.breaker_cooldown_max_secs,
        allow_http = push.allow_http,
        allow_private = push.allow_private_networks,
    );
    for partner in &settings.partners {
        text.push_str(&format!(
            "[[partners]]\ncode = \"{}\"\nsecret = \"{}\"\n",
            partner.code,
            partner.secret.expose_secret()
        ));
        if let Some(push) = &partner.push {
            let secrets: Vec<String> = push
                .secrets
                .iter()
                .map(|secret| format!("{:?}", secret.expose_secret()))
                .collect();
            text.push_str(&format!(
                "[partners.push]\nurl = \"{}\"\nsecrets = [{}]\nmax_in_flight = {}\n",
                push.url,
                secrets.join(", "),
                push.max_in_flight
            ));
        }
        text.push('\n');
    }
    text
}
