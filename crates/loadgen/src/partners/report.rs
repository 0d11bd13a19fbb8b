//! The report of a `--pace` run: one row per partner (requests, results, request-to-result
//! latency, Stripe calls), the Stripe calls of the whole run, and the shares while every partner
//! with a count still had work; as a table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;

use super::Pace;
use crate::follow::FollowOutcome;
use crate::metrics::{self, Calls as Counted};
use crate::percentiles::{Percentiles, round3};
use crate::report::{Header as SingleHeader, PacingReport, Report, SendOutcome};

/// One partner's sends and results, as the run left them.
pub(super) struct PartnerRun {
    pub code: String,
    pub pace: Pace,
    pub max_in_flight: usize,
    pub concurrency: usize,
    pub sent: SendOutcome,
    pub results: FollowOutcome,
}

pub(super) struct Header {
    pub run_id: String,
    pub target: String,
    pub started: Instant,
    pub interrupted: bool,
}

/// The workers' counts: before the run, once a second during it, after it (or why not).
pub(super) struct Calls {
    pub before: Option<Counted>,
    pub samples: Vec<(Instant, Counted)>,
    pub after: Option<Result<Counted, String>>,
}

/// How a partner was paced, as reported.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "pace", rename_all = "snake_case")]
pub enum PaceReport {
    Steady { rate: f64, count: Option<u64> },
    Burst { count: u64 },
}

impl PaceReport {
    fn describe(&self) -> String {
        match self {
            PaceReport::Steady { rate, count: None } => format!("{rate}/s"),
            PaceReport::Steady {
                rate,
                count: Some(count),
            } => format!("{count} at {rate}/s"),
            PaceReport::Burst { count } => format!("burst {count}"),
        }
    }
}

/// One partner's figures.
#[derive(Debug, Serialize)]
pub struct PartnerReport {
    pub partner: String,
    #[serde(flatten)]
    pub pace: PaceReport,
    pub sent: u64,
    /// Answered 200: the job is with the service.
    pub accepted: u64,
    /// Answered 429 or 503.
    pub shed: u64,
    /// Result events: `failed …` ones are failed, every other status succeeded.
    pub succeeded: u64,
    pub failed: u64,
    /// Accepted jobs without a result event within the result timeout.
    pub no_result: u64,
    /// From the request (its slot, for a steady partner) to its result event.
    pub result_ms: Option<Percentiles>,
    /// Stripe calls the workers made for this partner during the run; `None` (n/a) when the
    /// workers do not label their calls by partner, or without `--worker-metrics`.
    pub stripe_calls: Option<u64>,
    /// Everything else about this partner's requests, as a single-partner run reports it.
    pub detail: Report,
}

/// The Stripe calls of the whole run, from the workers' `/metrics`.
#[derive(Debug, Serialize)]
pub struct StripeCallsReport {
    /// Every call, for any partner or none (a price lookup names no partner).
    pub total: u64,
    /// Calls a second from the first request to the last result.
    pub per_second: f64,
    /// By partner; `None` (n/a) when the workers do not label their calls by partner.
    pub by_partner: Option<BTreeMap<String, u64>>,
    /// Calls without a `partner` label (all of them when the workers have none).
    pub unlabelled: u64,
    /// Why the figures after the run could not be read.
    pub error: Option<String>,
}

/// From the first request until the first partner with a count had all its results: while
/// each of them still had work, what each got. With fewer than two such partners, none.
#[derive(Debug, Serialize)]
pub struct SharedWindow {
    /// The partner whose last result ended the window.
    pub ended_by: String,
    pub seconds: f64,
    /// Results each partner got in the window.
    pub results: BTreeMap<String, u64>,
    /// Stripe calls each partner got in the window (the workers' last reading before its end);
    /// `None` (n/a) when the workers do not label their calls by partner.
    pub stripe_calls: Option<BTreeMap<String, u64>>,
}

/// The whole report; `--json` prints exactly this.
#[derive(Debug, Serialize)]
pub struct PartnersReport {
    /// `partners`.
    pub mode: &'static str,
    pub run_id: String,
    pub target: String,
    pub interrupted: bool,
    /// From the first request to the last result of any partner.
    pub elapsed_s: f64,
    pub partners: Vec<PartnerReport>,
    /// Without `--worker-metrics`, none.
    pub stripe_calls: Option<StripeCallsReport>,
    pub shared_window: Option<SharedWindow>,
    /// Why this run failed its checks, by partner; empty when it passed.
    pub failures: Vec<String>,
}

pub(super) fn build(header: Header, runs: Vec<PartnerRun>, calls: Calls) -> PartnersReport {
    let last_result = runs
        .iter()
        .flat_map(|run| run.results.result_times.iter().copied())
        .max();
    let elapsed = last_result.map_or(0.0, |last| {
        last.saturating_duration_since(header.started).as_secs_f64()
    });
    let run_calls = match (&calls.before, &calls.after) {
        (Some(before), Some(Ok(after))) => Some(after.since(before)),
        _ => None,
    };
    let shared_window = shared_window(&runs, header.started, &calls);
    let stripe_calls = calls.before.as_ref().map(|_| {
        let error = match &calls.after {
            Some(Err(error)) => Some(error.clone()),
            _ => None,
        };
        let counted = run_calls.clone().unwrap_or_default();
        StripeCallsReport {
            total: counted.total,
            per_second: if elapsed > 0.0 {
                round3(counted.total as f64 / elapsed)
            } else {
                0.0
            },
            by_partner: counted.by_partner,
            unlabelled: counted.unlabelled,
            error,
        }
    });
    let mut failures = Vec::new();
    let partners = runs
        .into_iter()
        .map(|run| {
            let pacing = match run.pace {
                Pace::Burst { .. } => PacingReport::Closed {
                    concurrency: run.concurrency,
                },
                Pace::Steady { rate, .. } => PacingReport::Open {
                    rate,
                    max_in_flight: run.max_in_flight,
                },
            };
            let pace = match run.pace {
                Pace::Burst { count } => PaceReport::Burst { count },
                Pace::Steady { rate, count } => PaceReport::Steady { rate, count },
            };
            let accepted = run
                .sent
                .samples
                .iter()
                .filter(|s| s.answer.is_accepted())
                .count() as u64;
            let detail = Report::build(
                SingleHeader {
                    mode: "http",
                    run_id: header.run_id.clone(),
                    target: header.target.clone(),
                    pacing,
                },
                run.sent,
                Some(run.results),
            );
            failures.extend(
                detail
                    .failures
                    .iter()
                    .map(|failure| format!("{}: {failure}", run.code)),
            );
            let results = detail.results.as_ref();
            let outcomes = results.map(|r| &r.outcomes);
            let failed: u64 = outcomes.map_or(0, |o| {
                o.iter()
                    .filter(|(outcome, _)| outcome.starts_with("failed"))
                    .map(|(_, n)| n)
                    .sum()
            });
            let received = results.map_or(0, |r| r.received);
            PartnerReport {
                stripe_calls: run_calls
                    .as_ref()
                    .and_then(|c| c.by_partner.as_ref())
                    .map(|by| by.get(&run.code).copied().unwrap_or(0)),
                partner: run.code,
                pace,
                sent: detail.sent.total,
                accepted,
                shed: detail.checks.shed,
                succeeded: received - failed,
                failed,
                no_result: results.map_or(0, |r| r.no_result),
                result_ms: results.and_then(|r| r.completion_ms),
                detail,
            }
        })
        .collect();
    PartnersReport {
        mode: "partners",
        run_id: header.run_id,
        target: header.target,
        interrupted: header.interrupted,
        elapsed_s: round3(elapsed),
        partners,
        stripe_calls,
        shared_window,
        failures,
    }
}

fn shared_window(runs: &[PartnerRun], started: Instant, calls: &Calls) -> Option<SharedWindow> {
    let counted: Vec<&PartnerRun> = runs.iter().filter(|r| r.pace.count().is_some()).collect();
    if counted.len() < 2 {
        return None;
    }
    // The earliest "last result" among them: until then, every one of them had work.
    let (ended_by, end) = counted
        .iter()
        .filter_map(|run| {
            let last = run.results.result_times.iter().max()?;
            Some((run.code.clone(), *last))
        })
        .min_by_key(|(_, last)| *last)?;
    let results = runs
        .iter()
        .map(|run| {
            let n = run
                .results
                .result_times
                .iter()
                .filter(|t| **t <= end)
                .count();
            (run.code.clone(), n as u64)
        })
        .collect();
    let stripe_calls = match (&calls.before, metrics::at_or_before(&calls.samples, end)) {
        (Some(before), Some((_, then))) => then.since(before).by_partner,
        _ => None,
    };
    Some(SharedWindow {
        ended_by,
        seconds: round3(end.saturating_duration_since(started).as_secs_f64()),
        results,
        stripe_calls,
    })
}

/// `a of n (x %)` for each partner, in the order given.
fn shares(order: &[&str], counts: &BTreeMap<String, u64>) -> String {
    let total: u64 = counts.values().sum();
    order
        .iter()
        .map(|code| {
            let n = counts.get(*code).copied().unwrap_or(0);
            let share = if total > 0 {
                100.0 * n as f64 / total as f64
            } else {
                0.0
            };
            format!("{code} {n} ({share:.1} %)")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl PartnersReport {
    pub fn to_json(&self) -> String {
        // Plain data (strings, numbers, maps with string keys): it serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "loadgen partners run {} → {}{}",
            self.run_id,
            self.target,
            if self.interrupted {
                " (interrupted: partial figures)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "\npartner      pace              sent accepted   shed  succeeded failed no-result \
             result p50 ms     p90 ms     p99 ms     max ms  Stripe calls"
        );
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        for p in &self.partners {
            let r = p.result_ms;
            let _ = writeln!(
                out,
                "{:<12} {:<14} {:>7} {:>8} {:>6} {:>10} {:>6} {:>9} {:>13} {:>10} {:>10} {:>10}  {}",
                p.partner,
                p.pace.describe(),
                p.sent,
                p.accepted,
                p.shed,
                p.succeeded,
                p.failed,
                p.no_result,
                ms(r.map(|r| r.p50)),
                ms(r.map(|r| r.p90)),
                ms(r.map(|r| r.p99)),
                ms(r.map(|r| r.max)),
                p.stripe_calls.map_or("n/a".to_owned(), |n| n.to_string()),
            );
        }
        let order: Vec<&str> = self.partners.iter().map(|p| p.partner.as_str()).collect();
        match &self.stripe_calls {
            None => {
                let _ = writeln!(
                    out,
                    "\nStripe calls: n/a (give --worker-metrics to read the workers' counts)"
                );
            }
            Some(calls) => {
                let by = match &calls.by_partner {
                    Some(by) => shares(&order, by),
                    None => format!(
                        "n/a (the workers' `{}` has no `{}` label)",
                        metrics::STRIPE_CALLS,
                        metrics::PARTNER_LABEL
                    ),
                };
                let _ = writeln!(
                    out,
                    "\nStripe calls (workers' /metrics): {} in {:.1} s = {:.1}/s; by partner: {by}",
                    calls.total, self.elapsed_s, calls.per_second
                );
                if let Some(error) = &calls.error {
                    let _ = writeln!(out, "  ! after the run: {error}");
                }
            }
        }
        if let Some(window) = &self.shared_window {
            let calls = window
                .stripe_calls
                .as_ref()
                .map_or_else(|| "n/a".to_owned(), |by| shares(&order, by));
            let _ = writeln!(
                out,
                "until {} had all its results ({:.1} s): results {}; Stripe calls {calls}",
                window.ended_by,
                window.seconds,
                shares(&order, &window.results)
            );
        }
        if self.failures.is_empty() && self.interrupted {
            let _ = writeln!(out, "\nINTERRUPTED (partial figures)");
        } else if self.failures.is_empty() {
            let _ = writeln!(out, "\nOK");
        } else {
            let _ = writeln!(out, "\nFAILED");
            for failure in &self.failures {
                let _ = writeln!(out, "  - {failure}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Answer, Sample};
    use std::time::Duration;

    fn run(code: &str, pace: Pace, start: Instant, result_after_ms: &[u64]) -> PartnerRun {
        let mut sent = SendOutcome {
            elapsed: Duration::from_secs(1),
            ..SendOutcome::default()
        };
        let mut results = FollowOutcome::default();
        for (n, after) in result_after_ms.iter().enumerate() {
            sent.samples.push(Sample {
                kind: crate::payload::Kind::Fresh,
                pay_id: format!("{code}-{n}"),
                declining: false,
                sent_at: start,
                latency: Duration::from_millis(1),
                answer: Answer::Http {
                    status: 200,
                    code: "S".into(),
                },
            });
            results
                .result_times
                .push(start + Duration::from_millis(*after));
        }
        results.completion_ms = Percentiles::of(
            result_after_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
        );
        results.followed = result_after_ms.len() as u64;
        results.received = result_after_ms.len() as u64;
        results.outcomes.insert("active".into(), results.received);
        PartnerRun {
            code: code.into(),
            pace,
            max_in_flight: 8,
            concurrency: 4,
            sent,
            results,
        }
    }

    fn counted(a: u64, b: u64) -> Counted {
        Counted {
            total: a + b,
            by_partner: Some(BTreeMap::from([("A".into(), a), ("B".into(), b)])),
            unlabelled: 0,
        }
    }

    fn header(started: Instant) -> Header {
        Header {
            run_id: "r".into(),
            target: "http://127.0.0.1:1/".into(),
            started,
            interrupted: false,
        }
    }

    #[test]
    fn the_shared_window_ends_with_the_first_partner_done() {
        let start = Instant::now();
        let runs = vec![
            run("A", Pace::Burst { count: 4 }, start, &[100, 200, 300, 900]),
            run("B", Pace::Burst { count: 2 }, start, &[150, 500]),
            run(
                "C",
                Pace::Steady {
                    rate: 1.0,
                    count: None,
                },
                start,
                &[50, 600],
            ),
        ];
        let calls = Calls {
            before: Some(counted(10, 10)),
            samples: vec![
                (start + Duration::from_millis(400), counted(16, 13)),
                (start + Duration::from_millis(800), counted(40, 20)),
            ],
            after: Some(Ok(counted(40, 20))),
        };
        let report = build(header(start), runs, calls);
        let window = report
            .shared_window
            .as_ref()
            .expect("two partners with counts");
        assert_eq!(window.ended_by, "B");
        assert_eq!(window.seconds, 0.5);
        assert_eq!(window.results["A"], 3);
        assert_eq!(window.results["B"], 2);
        assert_eq!(window.results["C"], 1);
        let calls = window.stripe_calls.as_ref().expect("labelled");
        assert_eq!((calls["A"], calls["B"]), (6, 3), "the reading at 400 ms");
        assert_eq!(report.partners[0].stripe_calls, Some(30));
        assert_eq!(report.partners[2].stripe_calls, Some(0), "no call named C");
        let whole = report.stripe_calls.as_ref().expect("read");
        assert_eq!(whole.total, 40);
        assert_eq!(whole.per_second, round3(40.0 / 0.9));
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert!(report.to_table().contains("A 6 (66.7 %), B 3 (33.3 %)"));
    }

    #[test]
    fn without_the_partner_label_the_calls_by_partner_are_not_available() {
        let start = Instant::now();
        let runs = vec![
            run("A", Pace::Burst { count: 1 }, start, &[100]),
            run(
                "B",
                Pace::Steady {
                    rate: 2.0,
                    count: None,
                },
                start,
                &[10, 20],
            ),
        ];
        let unlabelled = |n| Counted {
            total: n,
            ..Counted::default()
        };
        let calls = Calls {
            before: Some(unlabelled(100)),
            samples: Vec::new(),
            after: Some(Ok(unlabelled(109))),
        };
        let report = build(header(start), runs, calls);
        assert!(report.shared_window.is_none(), "one partner with a count");
        assert_eq!(report.partners[1].stripe_calls, None);
        assert_eq!(report.partners[1].succeeded, 2);
        assert_eq!(report.partners[1].accepted, 2);
        let whole = report.stripe_calls.as_ref().expect("read");
        assert_eq!((whole.total, whole.by_partner.as_ref()), (9, None));
        let table = report.to_table();
        assert!(table.contains("n/a (the workers'"), "{table}");
        assert!(table.contains("burst 1"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("parses");
        assert_eq!(json["partners"][0]["pace"], "burst");
        assert_eq!(json["partners"][1]["rate"], 2.0);
        assert!(json["partners"][1]["stripe_calls"].is_null());
        assert_eq!(json["partners"][0]["result_ms"]["count"], 1);
        assert_eq!(json["stripe_calls"]["total"], 9);
    }
}
