//! Benchmarks of `autorenew stripe-sim`: simple requests per second with no faults (the
//! simulator must never be what limits a load test), the rate limiter's accuracy over
//! ten seconds at Stripe's live (100/s) and test (25/s) limits, and how long one
//! `POST /_sim/advance` takes to renew and charge [`RENEWALS`] subscriptions (it holds the
//! state lock meanwhile, and `loadgen --renewals` measures from it).
//!
//! `cargo bench -p stripe-sim --bench sim` (add `-- SECONDS` to change the throughput run's
//! length). The client runs in the same process, on the same cores, so the throughput is a lower
//! bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stripe_sim::faults::{FaultConfig, STRIPE_LIVE_RATE, STRIPE_TEST_RATE};
use stripe_sim::{Application, SimSettings};
use tokio_util::sync::CancellationToken;

const KEY: &str = "sk_test_bench";
/// Concurrent clients: enough to keep both cores busy despite per-request round trips.
const CLIENTS: usize = 64;
/// Subscriptions one advance renews in the renewal benchmark.
const RENEWALS: usize = 2_000;

fn main() -> anyhow::Result<()> {
    let seconds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (requests, rate) = throughput(Duration::from_secs(seconds)).await?;
        println!(
            "throughput: GET /v1/customers/{{id}}, {CLIENTS} clients, {seconds} s: \
             {requests} requests, {rate:.0} req/s"
        );
        let (took, events) = renewals(RENEWALS).await?;
        println!(
            "advance: {RENEWALS} subscriptions renewed and charged, {events} events, in \
             {:.0} ms = {:.0} renewals/s",
            took.as_secs_f64() * 1e3,
            RENEWALS as f64 / took.as_secs_f64()
        );
        for (name, limit) in [("live", STRIPE_LIVE_RATE), ("test", STRIPE_TEST_RATE)] {
            let window = Duration::from_secs(10);
            let (accepted, limited) = limiter(limit, window).await?;
            let measured = accepted as f64 / window.as_secs_f64();
            println!(
                "limiter ({name}, {limit}/s): {accepted} accepted, {limited} answered 429 in \
                 10 s = {measured:.2}/s, {:+.2}% off the configured rate",
                (measured - limit) / limit * 100.0
            );
        }
        Ok(())
    })
}

/// A running simulator, its base URL, and one customer to read.
async fn start(faults: FaultConfig) -> anyhow::Result<(String, String, CancellationToken)> {
    let app = Application::build(SimSettings {
        faults,
        ..SimSettings::laptop()
    })?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/v1/customers"))
        .bearer_auth(KEY)
        .form(&[("email", "bench@example.com")])
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    Ok((base, id, stop))
}

/// `CLIENTS` tasks hammering one URL until `done`; returns the count per status class.
async fn hammer(url: String, done: Arc<AtomicBool>) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, done) = (client.clone(), url.clone(), done.clone());
            let (ok, limited) = (ok.clone(), limited.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    let Ok(response) = client.get(&url).bearer_auth(KEY).send().await else {
                        continue;
                    };
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    match status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => limited.fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed))
}

async fn throughput(length: Duration) -> anyhow::Result<(u64, f64)> {
    let (base, id, stop) = start(FaultConfig::default()).await?;
    let url = format!("{base}/v1/customers/{id}");
    // Warm the connections up so the count measures steady state.
    let done = Arc::new(AtomicBool::new(false));
    let warm = tokio::spawn(hammer(url.clone(), done.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let _ = warm.await;

    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let run = tokio::spawn(hammer(url, done.clone()));
    tokio::time::sleep(length).await;
    done.store(true, Ordering::Relaxed);
    let (ok, _) = run.await?;
    let rate = ok as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    Ok((ok, rate))
}

/// Makes `count` monthly subscriptions (customers created with `pm_card_visa`), then times
/// one advance of 31 days over them; returns its duration and the events it recorded.
async fn renewals(count: usize) -> anyhow::Result<(Duration, u64)> {
    let (base, _, stop) = start(FaultConfig::default()).await?;
    let client = reqwest::Client::new();
    let post = |path: &str, form: Vec<(String, String)>| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(KEY)
            .form(&form)
            .send()
    };
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let price: serde_json::Value = post(
        "/v1/prices",
        vec![
            pair("currency", "usd"),
            pair("unit_amount", "1999"),
            pair("recurring[interval]", "month"),
            pair("product_data[name]", "Bench"),
        ],
    )
    .await?
    .json()
    .await?;
    let price = price["id"].as_str().unwrap_or_default().to_owned();
    for n in 0..count {
        let customer: serde_json::Value = post(
            "/v1/customers",
            vec![
                pair("email", &format!("renew{n}@example.com")),
                pair("payment_method", "pm_card_visa"),
                pair("invoice_settings[default_payment_method]", "pm_card_visa"),
            ],
        )
        .await?
        .json()
        .await?;
        let customer = customer["id"].as_str().unwrap_or_default().to_owned();
        post(
            "/v1/subscriptions",
            vec![pair("customer", &customer), pair("items[0][price]", &price)],
        )
        .await?
        .error_for_status()?;
    }
    let started = Instant::now();
    let report: serde_json::Value = client
        .post(format!("{base}/_sim/advance"))
        .form(&[("seconds", 31 * 86_400)])
        .send()
        .await?
        .json()
        .await?;
    let took = started.elapsed();
    stop.cancel();
    anyhow::ensure!(
        report["renewals"].as_u64() == Some(count as u64),
        "the advance renewed {} of {count}",
        report["renewals"]
    );
    Ok((took, report["events"].as_u64().unwrap_or(0)))
}

/// Requests accepted in `window` by a limiter at `rate`, with clients far above it.
async fn limiter(rate: f64, window: Duration) -> anyhow::Result<(u64, u64)> {
    let faults = FaultConfig {
        rate_limit_per_second: rate,
        ..FaultConfig::default()
    };
    let (base, id, stop) = start(faults).await?;
    // Let the bucket refill after `start`'s own request, then measure from a full bucket,
    // as a client arriving at an idle Stripe would.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let done = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(hammer(format!("{base}/v1/customers/{id}"), done.clone()));
    tokio::time::sleep(window).await;
    done.store(true, Ordering::Relaxed);
    let counts = run.await?;
    stop.cancel();
    Ok(counts)
}
