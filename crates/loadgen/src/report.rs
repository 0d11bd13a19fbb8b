//! What a run measured: every answer as a [`Sample`], exact percentiles, and the report printed
//! as a table for people or as one JSON object for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::follow::FollowOutcome;
use super::payload::Kind;
pub use super::percentiles::Percentiles;
use super::percentiles::{millis, round3};

/// How one request (or baseline publish) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP answer: its status and `S` or its `errorCode` (`-` when the body had none).
    Http { status: u16, code: String },
    /// A broker confirm in baseline mode: `ack`, `nack`, `returned`, `timeout`.
    Broker(&'static str),
    /// No answer at all: `timeout`, `connect`, `body`, `other`.
    Error(&'static str),
}

impl Answer {
    /// The key this answer is counted under: `200 S`, `409 PAY_ID_CONFLICT`, `ack`, `error timeout`.
    pub fn key(&self) -> String {
        match self {
            Answer::Http { status, code } => format!("{status} {code}"),
            Answer::Broker(outcome) => (*outcome).to_owned(),
            Answer::Error(what) => format!("error {what}"),
        }
    }

    /// Whether the request's job is now with the service (HTTP 200, or a broker ack).
    pub fn is_accepted(&self) -> bool {
        matches!(
            self,
            Answer::Http { status: 200, .. } | Answer::Broker("ack")
        )
    }
}

/// One request as sent and answered.
#[derive(Debug, Clone)]
pub struct Sample {
    pub kind: Kind,
    pub pay_id: String,
    pub declining: bool,
    /// When it was due: the scheduled slot in open loop, the send in closed loop. End-to-end
    /// latency counts from here too.
    pub sent_at: Instant,
    pub latency: Duration,
    pub answer: Answer,
}

/// Writes every sample as one JSON line: the per-request record behind the report.
pub fn write_record(path: &std::path::Path, samples: &[Sample]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    // When each request was due, from the first: what a checker needs to place an answer in
    // time (e.g. the 503s while a broker node was lost).
    let start = samples.iter().map(|sample| sample.sent_at).min();
    for sample in samples {
        let (status, code) = match &sample.answer {
            Answer::Http { status, code } => (Some(*status), code.clone()),
            other => (None, other.key()),
        };
        let line = serde_json::json!({
            "payId": sample.pay_id,
            "kind": sample.kind.as_str(),
            "status": status,
            "code": code,
            "latency_ms": sample.latency.as_secs_f64() * 1000.0,
            "at_ms": start.map_or(0.0, |start| {
                sample.sent_at.duration_since(start).as_secs_f64() * 1000.0
            }),
        });
        writeln!(out, "{line}")?;
    }
    out.flush()
}

/// How an answer compares with what its kind expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Expected,
    /// 429 or 503: the service refused honestly (over a rate, or its broker or Redis is busy).
    Shed,
    /// No answer at all (timeout, refused connection).
    Error,
    /// An answer the request's kind rules out: a correctness problem.
    Mismatched,
}

pub fn verdict(kind: Kind, answer: &Answer) -> Verdict {
    match answer {
        Answer::Error(_) => Verdict::Error,
        Answer::Broker("ack") => Verdict::Expected,
        Answer::Broker(_) => Verdict::Mismatched,
        Answer::Http { status, .. } => match (kind, status) {
            (_, 429 | 503) => Verdict::Shed,
            // A duplicate answers like the first time: 200, with `F` once its job has failed.
            (Kind::Fresh | Kind::Duplicate, 200) => Verdict::Expected,
            (Kind::Conflict, 409) => Verdict::Expected,
            (Kind::Invalid, 400 | 401) => Verdict::Expected,
            _ => Verdict::Mismatched,
        },
    }
}

/// What the send phase produced, whatever the mode.
#[derive(Debug, Default)]
pub struct SendOutcome {
    pub samples: Vec<Sample>,
    pub elapsed: Duration,
    /// Open loop: sends that left more than `LATE_AFTER` after their slot.
    pub late: u64,
    pub max_lateness: Duration,
    pub interrupted: bool,
}

/// How the load was paced, as reported.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "loop", rename_all = "snake_case")]
pub enum PacingReport {
    Open { rate: f64, max_in_flight: usize },
    Closed { concurrency: usize },
}

#[derive(Debug, Default, Serialize)]
pub struct SentCounts {
    pub total: u64,
    pub fresh: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub invalid: u64,
    /// Fresh requests with the declining test card.
    pub declining: u64,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub sent_per_s: f64,
    pub answered_per_s: f64,
    /// HTTP 200 (or broker acks in baseline mode) per second: the figure to compare.
    pub accepted_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Latencies {
    pub all: Option<Percentiles>,
    pub accepted: Option<Percentiles>,
}

#[derive(Debug, Default, Serialize)]
pub struct Checks {
    pub expected: u64,
    pub shed: u64,
    pub errors: u64,
    pub mismatched: u64,
}

/// The whole report; `--json` prints exactly this.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `http` or `baseline`.
    pub mode: &'static str,
    pub run_id: String,
    /// The intake URL, or the scratch queue in baseline mode.
    pub target: String,
    pub pacing: PacingReport,
    pub interrupted: bool,
    pub elapsed_s: f64,
    pub sent: SentCounts,
    pub late_sends: u64,
    pub max_lateness_ms: f64,
    pub throughput: Throughput,
    pub latency_ms: Latencies,
    /// Answers by `<status> <S|errorCode>` (or broker outcome, or `error <what>`).
    pub answers: BTreeMap<String, u64>,
    pub checks: Checks,
    /// Answers a request's kind rules out, by `<kind>: <answer>`.
    pub mismatched: BTreeMap<String, u64>,
    pub results: Option<FollowOutcome>,
    /// Why this run failed its checks; empty when it passed.
    pub failures: Vec<String>,
}

/// The parts of a report that come from the plan rather than the measurements.
#[derive(Debug, Clone)]
pub struct Header {
    pub mode: &'static str,
    pub run_id: String,
    pub target: String,
    pub pacing: PacingReport,
}

impl Report {
    pub fn build(header: Header, sent: SendOutcome, results: Option<FollowOutcome>) -> Report {
        let mut counts = SentCounts::default();
        let mut answers = BTreeMap::new();
        let mut mismatched = BTreeMap::new();
        let mut checks = Checks::default();
        let mut all = Vec::with_capacity(sent.samples.len());
        let mut accepted = Vec::new();
        let mut answered = 0u64;
        for sample in &sent.samples {
            counts.total += 1;
            match sample.kind {
                Kind::Fresh => counts.fresh += 1,
                Kind::Duplicate => counts.duplicates += 1,
                Kind::Conflict => counts.conflicts += 1,
                Kind::Invalid => counts.invalid += 1,
            }
            counts.declining += u64::from(sample.kind == Kind::Fresh && sample.declining);
            *answers.entry(sample.answer.key()).or_insert(0) += 1;
            match verdict(sample.kind, &sample.answer) {
                Verdict::Expected => checks.expected += 1,
                Verdict::Shed => checks.shed += 1,
                Verdict::Error => checks.errors += 1,
                Verdict::Mismatched => {
                    checks.mismatched += 1;
                    let key = format!("{}: {}", sample.kind.as_str(), sample.answer.key());
                    *mismatched.entry(key).or_insert(0) += 1;
                }
            }
            if !matches!(sample.answer, Answer::Error(_)) {
                answered += 1;
                all.push(sample.latency);
                if sample.answer.is_accepted() {
                    accepted.push(sample.latency);
                }
            }
        }
        let seconds = sent.elapsed.as_secs_f64();
        let per_second = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        let accepted_count = accepted.len() as u64;
        let mut report = Report {
            mode: header.mode,
            run_id: header.run_id,
            target: header.target,
            pacing: header.pacing,
            interrupted: sent.interrupted,
            elapsed_s: round3(seconds),
            throughput: Throughput {
                sent_per_s: per_second(counts.total),
                answered_per_s: per_second(answered),
                accepted_per_s: per_second(accepted_count),
            },
            sent: counts,
            late_sends: sent.late,
            max_lateness_ms: millis(sent.max_lateness),
            latency_ms: Latencies {
                all: Percentiles::of(all),
                accepted: Percentiles::of(accepted),
            },
            answers,
            checks,
            mismatched,
            results,
            failures: Vec::new(),
        };
        report.failures = report.find_failures();
        report
    }

    /// Shed load (429, 503) is the service refusing honestly and is no failure; answers that
    /// contradict the request, lost jobs and second outcomes for one payId are.
    fn find_failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.checks.mismatched > 0 {
            failures.push(format!(
                "{} answers contradict their request (see `mismatched`)",
                self.checks.mismatched
            ));
        }
        if self.checks.errors > 0 {
            failures.push(format!(
                "{} requests got no answer at all",
                self.checks.errors
            ));
        }
        if let Some(results) = &self.results {
            if results.duplicate_events.different_id > 0 {
                failures.push(format!(
                    "DUPLICATES: {} payIds got a second, different result event",
                    results.duplicate_events.different_id
                ));
            }
            if results.connection_lost {
                failures.push("the result-event subscription lost its connection".to_owned());
            }
            if let Some(renewals) = &results.renewals
                && renewals.missing > 0
                && !renewals.interrupted
            {
                failures.push(format!(
                    "{} subscriptions were not announced renewed {} times (nor renewal_failed) \
                     within the result timeout",
                    renewals.missing, renewals.periods
                ));
            }
            if results.no_result > 0 && !self.interrupted && !results.interrupted {
                failures.push(format!(
                    "{} accepted jobs had no result event within the result timeout",
                    results.no_result
                ));
            }
        }
        failures
    }

    pub fn to_json(&self) -> String {
        // The report is plain data (strings, numbers, maps with string keys): it serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let pacing = match self.pacing {
            PacingReport::Open {
                rate,
                max_in_flight,
            } => format!("open loop, {rate}/s, at most {max_in_flight} in flight"),
            PacingReport::Closed { concurrency } => format!("closed loop, {concurrency} senders"),
        };
        let _ = writeln!(
            out,
            "loadgen {} run {} → {}",
            self.mode, self.run_id, self.target
        );
        let _ = writeln!(out, "  {pacing}{}", interrupted_note(self.interrupted));
        let s = &self.sent;
        if self.mode == "baseline" {
            let _ = writeln!(out, "  published {} in {:.2} s", s.total, self.elapsed_s);
        } else {
            let _ = writeln!(
                out,
                "  sent {} in {:.2} s: {} fresh ({} declining), {} duplicates, {} conflicts, {} invalid",
                s.total, self.elapsed_s, s.fresh, s.declining, s.duplicates, s.conflicts, s.invalid
            );
        }
        if self.late_sends > 0 {
            let _ = writeln!(
                out,
                "  late sends: {} (up to {:.1} ms behind schedule)",
                self.late_sends, self.max_lateness_ms
            );
        }
        let t = &self.throughput;
        let _ = writeln!(
            out,
            "\nthroughput   {:>10.1} sent/s {:>10.1} answered/s {:>10.1} accepted/s",
            t.sent_per_s, t.answered_per_s, t.accepted_per_s
        );
        let _ = writeln!(
            out,
            "\nlatency (ms)      count      p50      p90      p99      max"
        );
        let label = if self.mode == "baseline" {
            "confirm"
        } else {
            "intake"
        };
        row(&mut out, &format!("{label} all"), self.latency_ms.all);
        row(
            &mut out,
            &format!("{label} accepted"),
            self.latency_ms.accepted,
        );
        if let Some(results) = &self.results {
            row(&mut out, "completion", results.completion_ms);
        }
        let _ = writeln!(out, "\nanswers");
        for (key, count) in &self.answers {
            let _ = writeln!(out, "  {key:<40} {count:>8}");
        }
        let c = &self.checks;
        let _ = writeln!(
            out,
            "checks: {} as expected, {} shed (429/503), {} without answer, {} contradicting",
            c.expected, c.shed, c.errors, c.mismatched
        );
        for (key, count) in &self.mismatched {
            let _ = writeln!(out, "  ! {key:<38} {count:>8}");
        }
        if let Some(results) = &self.results {
            results.write_table(&mut out);
        }
        let interrupted = self.interrupted || self.results.as_ref().is_some_and(|r| r.interrupted);
        if self.failures.is_empty() && interrupted {
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

fn interrupted_note(interrupted: bool) -> &'static str {
    if interrupted {
        " (interrupted: partial figures)"
    } else {
        ""
    }
}

pub(super) fn row(out: &mut String, label: &str, figures: Option<Percentiles>) {
    let _ = match figures {
        Some(p) => writeln!(
            out,
            "  {label:<16}{:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            p.count, p.p50, p.p90, p.p99, p.max
        ),
        None => writeln!(
            out,
            "  {label:<16}      0        -        -        -        -"
        ),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_expects_its_own_answer() {
        let http = |status: u16| Answer::Http {
            status,
            code: "X".into(),
        };
        assert_eq!(verdict(Kind::Fresh, &http(200)), Verdict::Expected);
        assert_eq!(verdict(Kind::Duplicate, &http(200)), Verdict::Expected);
        assert_eq!(verdict(Kind::Conflict, &http(409)), Verdict::Expected);
        assert_eq!(verdict(Kind::Conflict, &http(200)), Verdict::Mismatched);
        assert_eq!(verdict(Kind::Invalid, &http(401)), Verdict::Expected);
        assert_eq!(verdict(Kind::Invalid, &http(200)), Verdict::Mismatched);
        assert_eq!(verdict(Kind::Fresh, &http(409)), Verdict::Mismatched);
        assert_eq!(verdict(Kind::Fresh, &http(503)), Verdict::Shed);
        assert_eq!(
            verdict(Kind::Fresh, &Answer::Error("timeout")),
            Verdict::Error
        );
        assert_eq!(
            verdict(Kind::Fresh, &Answer::Broker("nack")),
            Verdict::Mismatched
        );
    }

    fn sample(kind: Kind, status: u16, code: &str, latency_ms: u64) -> Sample {
        Sample {
            kind,
            pay_id: "p".into(),
            declining: false,
            sent_at: Instant::now(),
            latency: Duration::from_millis(latency_ms),
            answer: Answer::Http {
                status,
                code: code.into(),
            },
        }
    }

    #[test]
    fn the_report_counts_answers_checks_and_failures() {
        let samples = vec![
            sample(Kind::Fresh, 200, "S", 10),
            sample(Kind::Fresh, 200, "S", 20),
            sample(Kind::Duplicate, 200, "S", 5),
            sample(Kind::Conflict, 409, "PAY_ID_CONFLICT", 3),
            sample(Kind::Invalid, 401, "SIGN_INVALID", 1),
            sample(Kind::Conflict, 200, "S", 4),
            sample(Kind::Fresh, 503, "BROKER_UNAVAILABLE", 1500),
        ];
        let header = Header {
            mode: "http",
            run_id: "r".into(),
            target: "http://127.0.0.1:1".into(),
            pacing: PacingReport::Closed { concurrency: 2 },
        };
        let sent = SendOutcome {
            samples,
            elapsed: Duration::from_secs(2),
            ..SendOutcome::default()
        };
        let report = Report::build(header, sent, None);
        assert_eq!(report.sent.total, 7);
        assert_eq!(report.sent.fresh, 3);
        assert_eq!(report.answers["200 S"], 4);
        assert_eq!(report.answers["409 PAY_ID_CONFLICT"], 1);
        assert_eq!(report.checks.expected, 5);
        assert_eq!(report.checks.shed, 1);
        assert_eq!(report.checks.mismatched, 1);
        assert_eq!(report.mismatched["conflict: 200 S"], 1);
        assert_eq!(report.throughput.accepted_per_s, 2.0);
        assert_eq!(report.latency_ms.accepted.map(|p| p.count), Some(4));
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);

        let json: serde_json::Value =
            serde_json::from_str(&report.to_json()).expect("the JSON parses");
        assert_eq!(json["pacing"]["loop"], "closed");
        assert_eq!(json["answers"]["200 S"], 4);
        assert_eq!(json["latency_ms"]["all"]["max"], 1500.0);
        assert!(json["results"].is_null());
        assert!(report.to_table().contains("FAILED"));
    }
}
