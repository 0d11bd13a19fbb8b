//! The workers' Stripe calls, read from their Prometheus `/metrics` (`--worker-metrics`): the
//! counter `autorenew_stripe_requests_total` summed over every worker, in all and by its
//! `partner` label when the workers have one (docs/performance.md, "Fairness between
//! partners"). A scrape before the run, one a second during it, one after; the report takes
//! differences, so the workers need not be fresh.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

/// The workers' counter of Stripe calls made (after the budget let them go).
pub const STRIPE_CALLS: &str = "autorenew_stripe_requests_total";
/// The label that names the partner a call was made for.
pub const PARTNER_LABEL: &str = "partner";
/// How often the calls are read during the run.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Why a `/metrics` page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--worker-metrics `{0}` is not an http:// URL")]
    BadUrl(String),
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}, line {line}: {reason}")]
    Parse {
        url: String,
        line: usize,
        reason: &'static str,
    },
}

/// One sample of the text exposition format: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Parses Prometheus' text format; comments and blank lines are skipped. `Err((line, reason))`
/// for a line that is not a sample (1-based).
pub fn parse(text: &str) -> Result<Vec<Sample>, (usize, &'static str)> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_line(line).map_err(|reason| (index + 1, reason))?);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value after the metric name")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("no value after the labels")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().map_err(|_| "the value is not a number")?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A sample's labels, as (name, value) in the order given.
type Labels = Vec<(String, String)>;

/// `key="value",…}` up to and including the closing brace; returns the labels and what follows.
fn parse_labels(mut text: &str) -> Result<(Labels, &str), &'static str> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let equals = text.find('=').ok_or("a label without `=`")?;
        let key = text[..equals].trim();
        if key.is_empty() {
            return Err("a label without a name");
        }
        text = text[equals + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value without quotes")?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value"),
                Some((at, '"')) => break at,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped)) => value.push(escaped),
                    None => return Err("an unterminated label value"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        text = text[end + 1..].trim_start();
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

/// The Stripe calls counted by the workers at one moment, summed over them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calls {
    pub total: u64,
    /// By the `partner` label; `None` when no sample carries it (the workers do not label
    /// their calls by partner).
    pub by_partner: Option<BTreeMap<String, u64>>,
    /// Calls in samples without the label (all of them when no sample has it).
    pub unlabelled: u64,
}

impl Calls {
    /// The Stripe calls among `samples` (the other metrics are ignored).
    pub fn of(samples: &[Sample]) -> Calls {
        let mut calls = Calls::default();
        let mut by_partner = BTreeMap::new();
        let mut unlabelled = 0;
        for sample in samples.iter().filter(|s| s.name == STRIPE_CALLS) {
            // A counter's value is a whole number; a negative or NaN one is a broken exporter.
            let value = if sample.value.is_finite() && sample.value > 0.0 {
                sample.value.round() as u64
            } else {
                0
            };
            calls.total += value;
            match sample.label(PARTNER_LABEL) {
                Some(partner) => *by_partner.entry(partner.to_owned()).or_insert(0) += value,
                None => unlabelled += value,
            }
        }
        calls.unlabelled = unlabelled;
        if !by_partner.is_empty() {
            calls.by_partner = Some(by_partner);
        }
        calls
    }

    /// Adds another worker's calls.
    fn add(&mut self, other: Calls) {
        self.total += other.total;
        self.unlabelled += other.unlabelled;
        if let Some(theirs) = other.by_partner {
            let ours = self.by_partner.get_or_insert_with(BTreeMap::new);
            for (partner, n) in theirs {
                *ours.entry(partner).or_insert(0) += n;
            }
        }
    }

    /// The calls made since `before` (a worker that restarted in between counts from 0).
    pub fn since(&self, before: &Calls) -> Calls {
        let by_partner = self.by_partner.as_ref().map(|after| {
            after
                .iter()
                .map(|(partner, n)| {
                    let earlier = before
                        .by_partner
                        .as_ref()
                        .and_then(|b| b.get(partner))
                        .copied()
                        .unwrap_or(0);
                    (partner.clone(), n.saturating_sub(earlier))
                })
                .collect()
        });
        Calls {
            total: self.total.saturating_sub(before.total),
            by_partner,
            unlabelled: self.unlabelled.saturating_sub(before.unlabelled),
        }
    }
}

/// Reads every worker's `/metrics`.
#[derive(Clone)]
pub struct Scraper {
    http: Client<HttpConnector, Empty<Bytes>>,
    urls: Vec<url::Url>,
    timeout: Duration,
}

impl std::fmt::Debug for Scraper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.urls.iter().map(url::Url::as_str).collect();
        f.debug_struct("Scraper").field("urls", &urls).finish()
    }
}

impl Scraper {
    /// `urls` as given to `--worker-metrics`: a base URL gets the path `/metrics`.
    pub fn new(urls: &[String], timeout: Duration) -> Result<Scraper, MetricsError> {
        let urls = urls
            .iter()
            .map(String::as_str)
            .map(metrics_url)
            .collect::<Result<_, _>>()?;
        Ok(Scraper {
            http: Client::builder(TokioExecutor::new()).build_http(),
            urls,
            timeout,
        })
    }

    /// Every worker's calls now, summed.
    pub async fn calls(&self) -> Result<Calls, MetricsError> {
        let mut calls = Calls::default();
        for url in &self.urls {
            calls.add(self.one(url).await?);
        }
        Ok(calls)
    }

    async fn one(&self, url: &url::Url) -> Result<Calls, MetricsError> {
        let unreachable = |reason: String| MetricsError::Unreachable {
            url: url.to_string(),
            reason,
        };
        let request = Request::builder()
            .method(Method::GET)
            .uri(url.as_str())
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))?
            .map_err(unreachable)?;
        if status != 200 {
            return Err(MetricsError::Status {
                url: url.to_string(),
                status,
            });
        }
        let text = String::from_utf8_lossy(&body);
        let samples = parse(&text).map_err(|(line, reason)| MetricsError::Parse {
            url: url.to_string(),
            line,
            reason,
        })?;
        Ok(Calls::of(&samples))
    }

    /// Reads the calls every [`SAMPLE_EVERY`] until stopped; a failed read is skipped.
    pub fn sample(self, stop: CancellationToken) -> Sampler {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let taken = taken.clone();
            async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    if let Ok(calls) = self.calls().await {
                        lock(&taken).push((Instant::now(), calls));
                    }
                }
            }
        });
        Sampler { taken, task }
    }
}

/// The calls read during the run, each with when it was read.
pub struct Sampler {
    taken: Arc<Mutex<Vec<(Instant, Calls)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Stops sampling (its token must be cancelled first) and returns what was read.
    pub async fn finish(self) -> Vec<(Instant, Calls)> {
        let _ = self.task.await;
        std::mem::take(&mut *lock(&self.taken))
    }
}

/// The last reading at or before `at`.
pub fn at_or_before(taken: &[(Instant, Calls)], at: Instant) -> Option<&(Instant, Calls)> {
    taken.iter().rev().find(|(when, _)| *when <= at)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only a list behind the lock: a panic elsewhere leaves it usable.
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn metrics_url(text: &str) -> Result<url::Url, MetricsError> {
    let mut url = url::Url::parse(text.trim()).map_err(|_| MetricsError::BadUrl(text.into()))?;
    if url.scheme() != "http" || url.host_str().is_none() {
        return Err(MetricsError::BadUrl(text.into()));
    }
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/metrics");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As a worker exposes it today: calls by operation only.
    const WITHOUT_PARTNER: &str = r#"# HELP autorenew_stripe_requests_total Stripe calls made
# TYPE autorenew_stripe_requests_total counter
autorenew_stripe_requests_total{operation="customers.list"} 1000
autorenew_stripe_requests_total{operation="customers.create"} 1000
autorenew_stripe_requests_total{operation="subscriptions.create"} 998
# TYPE autorenew_worker_jobs_total counter
autorenew_worker_jobs_total{outcome="succeeded"} 998
autorenew_stripe_budget_wait_seconds_bucket{le="+Inf"} 2998
"#;

    /// With the `partner` label, in another order, with a timestamp and escapes.
    const WITH_PARTNER: &str = r#"# TYPE autorenew_stripe_requests_total counter
autorenew_stripe_requests_total{partner="A",operation="customers.list"} 30 1700000000000
autorenew_stripe_requests_total{operation="customers.create",partner="A"} 3e1
autorenew_stripe_requests_total{operation="customers.list", partner="B"} 10
autorenew_stripe_requests_total{operation="subscriptions.create",partner="we \"quote\", and, commas"} 2
autorenew_stripe_requests_total{operation="prices.create"} 1
autorenew_worker_jobs_total{outcome="succeeded",partner="A"} 999
"#;

    #[test]
    fn without_the_partner_label_only_the_total_is_known() {
        let samples = parse(WITHOUT_PARTNER).expect("parses");
        assert_eq!(samples.len(), 5);
        assert_eq!(
            samples[0].labels,
            [("operation".into(), "customers.list".into())]
        );
        assert_eq!(samples[4].value, 2998.0);
        let calls = Calls::of(&samples);
        assert_eq!(calls.total, 2998);
        assert_eq!(calls.by_partner, None);
        assert_eq!(calls.unlabelled, 2998);
    }

    #[test]
    fn with_the_partner_label_calls_are_summed_by_partner() {
        let calls = Calls::of(&parse(WITH_PARTNER).expect("parses"));
        assert_eq!(calls.total, 73);
        let by = calls.by_partner.expect("labelled");
        assert_eq!(by["A"], 60);
        assert_eq!(by["B"], 10);
        assert_eq!(by["we \"quote\", and, commas"], 2);
        assert_eq!(by.len(), 3);
        assert_eq!(calls.unlabelled, 1, "the price's call names no partner");
    }

    #[test]
    fn workers_add_up_and_the_run_is_the_difference() {
        let mut before = Calls::of(&parse(WITH_PARTNER).expect("parses"));
        before.add(Calls::of(&parse(WITHOUT_PARTNER).expect("parses")));
        assert_eq!(before.total, 73 + 2998);
        assert_eq!(before.unlabelled, 1 + 2998);
        let mut after = before.clone();
        after.total += 15;
        if let Some(by) = after.by_partner.as_mut() {
            *by.entry("A".into()).or_insert(0) += 12;
            by.insert("C".into(), 3);
        }
        let run = after.since(&before);
        assert_eq!(run.total, 15);
        let by = run.by_partner.expect("labelled");
        assert_eq!((by["A"], by["B"], by["C"]), (12, 0, 3));
        // A worker restarted: its counter starts again at 0, never below.
        assert_eq!(Calls::default().since(&before).total, 0);
    }

    #[test]
    fn a_line_that_is_not_a_sample_is_refused_with_its_number() {
        assert_eq!(
            parse("# ok\nx 1\ny{a=\"1\" 2").map(|s| s.len()),
            Err((3, "a label without `=`"))
        );
        assert_eq!(parse("y{a=\"1} 2"), Err((1, "an unterminated label value")));
        assert!(parse("x{a=\"1\"}").is_err(), "no value");
        assert_eq!(
            parse("x{a=\"1\"} one"),
            Err((1, "the value is not a number"))
        );
        assert_eq!(parse("x{a=1} 1"), Err((1, "a label value without quotes")));
        assert_eq!(parse("x"), Err((1, "no value after the metric name")));
        assert_eq!(parse("x +Inf").map(|s| s[0].value), Ok(f64::INFINITY));
    }

    #[test]
    fn a_worker_url_gets_the_metrics_path_unless_it_has_one() {
        let url = |text: &str| metrics_url(text).map(|u| u.to_string());
        assert_eq!(
            url("http://127.0.0.1:9090").ok().as_deref(),
            Some("http://127.0.0.1:9090/metrics")
        );
        assert_eq!(
            url("http://127.0.0.1:9090/custom").ok().as_deref(),
            Some("http://127.0.0.1:9090/custom")
        );
        assert!(url("127.0.0.1:9090").is_err());
        assert!(url("https://example.com").is_err());
    }
}
