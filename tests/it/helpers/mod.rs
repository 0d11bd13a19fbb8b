//! Test helpers: [`TestStack`], the one way a test starts the parts of a deployment it needs
//! (`stack.rs`, with its parts in `intake.rs`, `sim.rs` and `push.rs`); signed requests, a
//! jobs-queue reader, bounded polling, clean-up on the shared broker and Redis, and private
//! RabbitMQ / Redis instances.

pub mod intake;
pub mod private;
pub mod push;
pub mod sim;
pub mod stack;

pub use intake::TestApp;
pub use stack::TestStack;

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use autorenew::config::{PartnerSettings, Settings};
use autorenew::domain::sign;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};

pub const PARTNER: &str = "P000818";
pub const SECRET: &str = "s3cr3t-P000818";
pub const OTHER_PARTNER: &str = "P000999";
pub const OTHER_SECRET: &str = "other-secret";
pub const SHARED_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

/// The fields every answer carries at top level (docs/partners.md#what-to-do-with-each-answer).
pub const FLAT_FIELDS: &[&str] = &[
    "operateCode",
    "message",
    "payId",
    "status",
    "customer_id",
    "pay_method",
    "product_id",
    "sub_id",
];

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Settings from the repo's config.toml, with a fresh prefix so each test has its own queues
/// and keys, listening on a random port, and a second partner: what every `TestStack` starts
/// from, and what a test that starts nothing but needs settings (a loader, a client) uses.
pub fn test_settings(amqp_url: &str, redis_url: &str) -> Settings {
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let env = [
        ("AUTORENEW__INTAKE__LISTEN", "127.0.0.1:0".to_owned()),
        ("AUTORENEW__AMQP__URL", amqp_url.to_owned()),
        ("AUTORENEW__AMQP__PREFIX", prefix.clone()),
        ("AUTORENEW__REDIS__URL", redis_url.to_owned()),
        ("AUTORENEW__REDIS__KEY_PREFIX", prefix),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut settings = Settings::load_with_env(Some(&repo_path("config.toml")), Some(env))
        .expect("the repo's config.toml loads");
    settings
        .partners
        .push(PartnerSettings::new(OTHER_PARTNER, OTHER_SECRET));
    settings
}

/// A child process, killed (SIGKILL) when dropped, so a failed test leaves none behind to
/// consume its queues and load the machine; it is the `Child` itself otherwise.
pub struct ChildGuard(pub Child);

impl Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A parsed answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Answer {
    pub async fn from(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("answer is not JSON ({status}): {text}"));
        Answer {
            status,
            body,
            retry_after,
        }
    }

    pub fn code(&self) -> &str {
        self.body["errorCode"].as_str().unwrap_or("")
    }

    pub fn field(&self) -> &str {
        self.body["field"].as_str().unwrap_or("")
    }
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A valid request for a fresh payId (unsigned; `post_signed` signs it).
pub fn valid_request() -> Value {
    json!({
        "email": "421516116@qq.com",
        "partnerCode": PARTNER,
        "payAmount": "19.99",
        "payCurrency": "usd",
        "payId": format!("T{}", uuid::Uuid::new_v4().simple()),
        "plan_id": "PLAN_MONTHLY_1GB",
        "pm_id": "pm_1GnMUDLnVNBddzslXw7xuoe6",
        "tradeType": "stripeSubDirectly",
        "version": "3.0",
    })
}

/// `params` with a tradeTime (now, unless one is set) and the sign for `secret`.
pub fn signed(mut params: Value, secret: &str) -> Value {
    let object = params.as_object_mut().expect("params are an object");
    object
        .entry("tradeTime")
        .or_insert_with(|| Value::String(now_millis().to_string()));
    object.remove("sign");
    let strings: BTreeMap<String, String> = object
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect();
    let content = sign::sign_content(strings.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    object.insert("sign".into(), Value::String(sign::sign(&content, secret)));
    params
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub async fn poll_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message read back from a queue.
#[derive(Debug)]
pub struct Received {
    pub body: Value,
    pub properties: lapin::BasicProperties,
}

/// Connects to the shared broker, failing the test (not hanging it) if the node takes the TCP
/// connection and never answers the handshake.
pub async fn shared_amqp() -> lapin::Connection {
    tokio::time::timeout(
        Duration::from_secs(10),
        lapin::Connection::connect(SHARED_AMQP, Default::default()),
    )
    .await
    .expect("RabbitMQ on 5672 answers the AMQP handshake within 10 s")
    .expect("connect to RabbitMQ on 5672")
}

/// Reads up to `count` messages from `queue` on the shared broker, waiting at most `limit`
/// (acks them, so the queue is left empty).
pub async fn read_queue(queue: &str, count: usize, limit: Duration) -> Vec<Received> {
    let connection = shared_amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "test-reader".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while received.len() < count {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
                received.push(Received {
                    body: serde_json::from_slice(&delivery.data).expect("JSON message"),
                    properties: delivery.properties.clone(),
                });
            }
            _ => break,
        }
    }
    let _ = connection.close(200, "done".into()).await;
    received
}

/// Deletes the queues and exchanges of a test's topology on the shared broker.
pub async fn delete_topology(topology: &autorenew::broker::Topology) {
    let queues = topology.queues();
    let exchanges = [
        topology.lanes_exchange(),
        topology.jobs(),
        topology.dead(),
        topology.results(),
        topology.push_return(),
    ];
    delete_names(&queues, &exchanges).await;
}

/// Deletes a test's keys from the shared Redis, which every test run would otherwise leave
/// behind (a private Redis goes away with its test).
pub async fn delete_keys(redis_url: &str, key_prefix: &str) {
    if redis_url != SHARED_REDIS || key_prefix.is_empty() {
        return;
    }
    let Ok(client) = redis::Client::open(redis_url) else {
        return;
    };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{key_prefix}:*"))
        .query_async(&mut connection)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: Result<(), _> = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut connection)
            .await;
    }
}

/// Deletes the queues of a test prefix with the default retry delays and the test partners'
/// lanes.
pub async fn delete_queues(prefix: &str) {
    let mut names = vec![
        format!("{prefix}.jobs"),
        format!("{prefix}.jobs.expired"),
        format!("{prefix}.dead"),
    ];
    for delay in ["10s", "1m", "10m", "1h", "locked", "reconcile"] {
        names.push(format!("{prefix}.delay.{delay}"));
    }
    for partner in ["P000818", OTHER_PARTNER] {
        names.push(format!("{prefix}.jobs.partner.{partner}"));
    }
    let exchanges = ["jobs.partners", "jobs", "dead", "results"].map(|e| format!("{prefix}.{e}"));
    delete_names(&names, &exchanges).await;
}

/// A partner's lane under a test prefix: where the intake puts that partner's creations and
/// cancels (docs/design.md, "Partners served in turn").
pub fn lane(prefix: &str, partner: &str) -> String {
    format!("{prefix}.jobs.partner.{partner}")
}

/// Deletes these queues on the shared broker (a test's own, outside its topology).
pub async fn delete_names_for_test(queues: &[String]) {
    delete_names(queues, &[]).await;
}

async fn delete_names(queues: &[String], exchanges: &[String]) {
    let connect = lapin::Connection::connect(SHARED_AMQP, Default::default());
    let Ok(Ok(connection)) = tokio::time::timeout(Duration::from_secs(10), connect).await else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    for name in queues {
        let _ = channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in exchanges {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}
