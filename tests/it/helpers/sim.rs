//! The simulator part of a [`TestStack`](super::stack::TestStack): the simulator on a free
//! port, a raw HTTP client for it, its admin routes (`/_sim/...`), and the async-stripe client.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::Value;
use stripe_sim::{Application, SimSettings};
use tokio_util::sync::CancellationToken;

pub const KEY: &str = "sk_test_simulator";

/// A running simulator; stopped when dropped. Started by `TestStack::builder().simulator(…)`.
pub struct TestSim {
    pub base: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn error_field(&self, field: &str) -> Option<&str> {
        self.body["error"][field].as_str()
    }

    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

impl TestSim {
    /// Starts the simulator on the port its settings name (port 0 in tests).
    pub(super) fn start(settings: SimSettings) -> TestSim {
        let app = Application::build(settings).expect("the simulator starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let shutdown = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        TestSim {
            base,
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    /// async-stripe's own client, pointed at the simulator.
    pub fn stripe(&self) -> stripe::Client {
        stripe::ClientBuilder::new(KEY)
            .url(&self.base)
            .build()
            .expect("a client")
    }

    /// `POST` a raw form body (Stripe's bracket syntax written out), with an optional
    /// idempotency key.
    pub async fn post(&self, path: &str, form: &str, key: Option<&str>) -> Answer {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        read(request.send().await.expect("the simulator answers")).await
    }

    pub async fn get(&self, path_and_query: &str) -> Answer {
        let request = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .bearer_auth(KEY);
        read(request.send().await.expect("the simulator answers")).await
    }

    pub async fn stats(&self) -> Value {
        let response = self
            .http
            .get(format!("{}/_sim/stats", self.base))
            .send()
            .await;
        let answer = read(response.expect("stats answer")).await;
        assert_eq!(answer.status, 200, "stats refused: {}", answer.body);
        answer.body
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Answer {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(&body);
        read(request.send().await.expect("admin answers")).await
    }

    /// `POST /_sim/advance`: moves the simulator's clock `seconds` on; returns its report.
    pub async fn advance(&self, seconds: i64) -> Value {
        let answer = self
            .http
            .post(format!("{}/_sim/advance", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("seconds={seconds}"))
            .send()
            .await
            .expect("advance answers");
        let answer = read(answer).await;
        assert_eq!(answer.status, 200, "advance refused: {}", answer.body);
        answer.body
    }

    /// The simulator's events of `kind`, newest first (one page of up to 100).
    pub async fn events_of(&self, kind: &str) -> Vec<Value> {
        let answer = self.get(&format!("/v1/events?type={kind}&limit=100")).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["data"].as_array().cloned().unwrap_or_default()
    }

    pub async fn configure(&self, patch: Value) {
        let answer = self
            .admin(reqwest::Method::PATCH, "/_sim/config", patch)
            .await;
        assert_eq!(answer.status, 200, "config refused: {}", answer.body);
    }

    pub async fn script(&self, route: &str, answers: Value) {
        let body = serde_json::json!({"route": route, "answers": answers});
        let answer = self
            .admin(reqwest::Method::POST, "/_sim/script", body)
            .await;
        assert_eq!(answer.status, 200, "script refused: {}", answer.body);
    }

    /// How many answers a route gave with `status` ("200", "dropped", …).
    pub async fn count(&self, route: &str, status: &str) -> u64 {
        self.stats().await["requests"][route][status]
            .as_u64()
            .unwrap_or(0)
    }

    /// Polls the stats until `check` holds, for at most two seconds.
    pub async fn wait_for_stats(&self, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let stats = self.stats().await;
            if check(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "stats never matched: {stats}");
            tokio::task::yield_now().await;
        }
    }

    /// A customer with a good card attached and set as default; returns (customer, pm).
    pub async fn customer_with_card(&self, email: &str, card: &str) -> (String, String) {
        let customer = self
            .post("/v1/customers", &format!("email={email}"), None)
            .await;
        assert_eq!(customer.status, 200, "{}", customer.body);
        let id = customer.body["id"].as_str().expect("an id").to_owned();
        let pm = self
            .post(
                &format!("/v1/payment_methods/{card}/attach"),
                &format!("customer={id}"),
                None,
            )
            .await;
        assert_eq!(pm.status, 200, "{}", pm.body);
        let pm = pm.body["id"].as_str().expect("a pm id").to_owned();
        let update = self
            .post(
                &format!("/v1/customers/{id}"),
                &format!("invoice_settings[default_payment_method]={pm}"),
                None,
            )
            .await;
        assert_eq!(update.status, 200, "{}", update.body);
        (id, pm)
    }

    /// A monthly recurring price of `amount` usd; returns its id.
    pub async fn price(&self, amount: u32, lookup_key: Option<&str>) -> String {
        let mut form = format!(
            "currency=usd&unit_amount={amount}&recurring[interval]=month&product_data[name]=Plan"
        );
        if let Some(key) = lookup_key {
            form.push_str(&format!("&lookup_key={key}"));
        }
        let price = self.post("/v1/prices", &form, None).await;
        assert_eq!(price.status, 200, "{}", price.body);
        price.body["id"].as_str().expect("a price id").to_owned()
    }
}

pub async fn read(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("a whole body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
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
