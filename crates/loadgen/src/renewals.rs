//! `loadgen --renewals N`: after the creations, the simulator's clock moves N periods, and every
//! active subscription of the run must be announced renewed N times (or `renewal_failed`, for a
//! card that fails its charges) on the results exchange (docs/partners.md#the-rest-of-an-auto-renewals-life).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use super::follow::{Event, RENEWAL_FAILED, RENEWED};
use super::percentiles::round3;

/// One period and a day: every subscription's period has ended after each advance, whatever
/// the month's length.
pub const PERIOD_SECS: u64 = 32 * 24 * 3600;
const ADVANCE_TIMEOUT: Duration = Duration::from_secs(120);
const EXAMPLES: usize = 10;

/// What became of the renewals; part of the results.
#[derive(Debug, Default, Serialize)]
pub struct RenewalOutcome {
    pub periods: u32,
    /// Subscriptions of this run whose creation succeeded: each should renew.
    pub subscriptions: u64,
    /// Announced renewed `periods` times.
    pub renewed_every_period: u64,
    /// Announced `renewal_failed` at least once (a card that fails its charges).
    pub renewal_failed: u64,
    /// Neither, within the result timeout.
    pub missing: u64,
    pub missing_examples: Vec<String>,
    pub renewed_events: u64,
    pub renewal_failed_events: u64,
    /// The same event id again (at-least-once delivery; consumers de-duplicate by id).
    pub redelivered_events: u64,
    /// The N `POST /_sim/advance` calls, back to back.
    pub advance_ms: f64,
    /// From the first advance to the last renewal event.
    pub to_last_event_ms: Option<f64>,
    /// Renewal events (distinct) per second over that time.
    pub renewals_per_s: f64,
    pub interrupted: bool,
}

/// Moves the simulator's clock `periods` times by [`PERIOD_SECS`]; each advance invoices and
/// charges every subscription whose period ended, and its webhooks then reach the intake.
pub async fn advance(sim: &url::Url, periods: u32) -> anyhow::Result<()> {
    let uri: Uri = sim
        .join("/_sim/advance")
        .with_context(|| format!("--sim `{sim}` cannot take /_sim/advance"))?
        .as_str()
        .parse()
        .context("--sim is not a URI")?;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    for _ in 0..periods {
        // `wait: false`: the advance answers at once, without waiting for its deliveries, so
        // the report times the advance and the deliveries apart, as it always has.
        let body =
            serde_json::to_vec(&serde_json::json!({ "seconds": PERIOD_SECS, "wait": false }))?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = tokio::time::timeout(ADVANCE_TIMEOUT, client.request(request))
            .await
            .context("the simulator did not finish an advance in time")?
            .with_context(|| format!("the simulator at {uri} cannot be reached"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::bail!(
                "POST {uri} answered {status}: {} (is --sim our simulator?)",
                String::from_utf8_lossy(&body)
            );
        }
    }
    Ok(())
}

/// Whether a payId's renewals are all in: `periods` distinct `renewed`, or a `renewal_failed`.
pub(super) fn complete(events: &[Event], periods: u32) -> bool {
    let mut renewed = HashSet::new();
    for event in events {
        if event.outcome == RENEWAL_FAILED {
            return true;
        }
        if event.outcome == RENEWED {
            renewed.insert(event.id.as_str());
        }
    }
    renewed.len() >= periods as usize
}

pub(super) fn summarize(
    seen: &HashMap<String, Vec<Event>>,
    subscriptions: &[String],
    periods: u32,
    advanced_at: Instant,
    advance_took: Duration,
) -> RenewalOutcome {
    let mut outcome = RenewalOutcome {
        periods,
        subscriptions: subscriptions.len() as u64,
        advance_ms: round3(advance_took.as_secs_f64() * 1000.0),
        ..RenewalOutcome::default()
    };
    let mut last = None::<Instant>;
    let mut missing = Vec::new();
    for pay_id in subscriptions {
        let events = seen.get(pay_id).map_or(&[][..], Vec::as_slice);
        let mut ids = HashSet::new();
        for event in events {
            if !ids.insert(event.id.as_str()) {
                outcome.redelivered_events += 1;
                continue;
            }
            if event.outcome == RENEWED {
                outcome.renewed_events += 1;
            } else {
                outcome.renewal_failed_events += 1;
            }
            last = Some(last.map_or(event.received, |l: Instant| l.max(event.received)));
        }
        if events.iter().any(|e| e.outcome == RENEWAL_FAILED) {
            outcome.renewal_failed += 1;
        } else if complete(events, periods) {
            outcome.renewed_every_period += 1;
        } else {
            missing.push(pay_id.clone());
        }
    }
    outcome.missing = missing.len() as u64;
    missing.sort();
    outcome.missing_examples = missing.into_iter().take(EXAMPLES).collect();
    if let Some(last) = last {
        let took = last.saturating_duration_since(advanced_at).as_secs_f64();
        outcome.to_last_event_ms = Some(round3(took * 1000.0));
        if took > 0.0 {
            let events = outcome.renewed_events + outcome.renewal_failed_events;
            outcome.renewals_per_s = round3(events as f64 / took);
        }
    }
    outcome
}

impl RenewalOutcome {
    pub(super) fn write_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nrenewals: {} periods over {} subscriptions{}",
            self.periods,
            self.subscriptions,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  renewed every period                     {:>8}",
            self.renewed_every_period
        );
        let _ = writeln!(
            out,
            "  renewal_failed                           {:>8}",
            self.renewal_failed
        );
        let _ = writeln!(
            out,
            "  missing (must be 0)                      {:>8}",
            self.missing
        );
        let _ = writeln!(
            out,
            "  events: {} renewed, {} renewal_failed, {} redelivered (same id)",
            self.renewed_events, self.renewal_failed_events, self.redelivered_events
        );
        let _ = writeln!(
            out,
            "  advance {:.0} ms; advance to last event {}; {:.1} renewals/s",
            self.advance_ms,
            self.to_last_event_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms")),
            self.renewals_per_s
        );
        if !self.missing_examples.is_empty() {
            let _ = writeln!(out, "  missing, e.g.: {}", self.missing_examples.join(", "));
        }
    }
}
