//! `autorenew loadgen --pace …`: several partners at once, each paced on its own (a steady rate,
//! or a burst sent as fast as the intake takes it), each followed to its results by its own
//! routing key, and reported per partner: requests, results, request-to-result latency, and
//! the Stripe calls the workers made for it (`--worker-metrics`). What it is for:
//! docs/performance.md, "Fairness between partners".

mod report;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use secrecy::SecretString;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use report::{PaceReport, PartnerReport, PartnersReport, SharedWindow, StripeCallsReport};

use super::drive::{self, Limit, Pacing};
use super::follow::{FollowOutcome, FollowSpec, Follower};
use super::http::HttpSender;
use super::metrics::Scraper;
use super::payload::{Generator, Kind, Mix, PayloadSpec};
use super::progress::{Live, Progress};
use super::report::SendOutcome;
use super::{DEFAULT_CONCURRENCY, Defaults, LoadgenArgs};

/// How one partner's requests are paced (one `--pace`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// `rate` requests a second on a fixed schedule: `count` of them, or, without a count, for
    /// `--duration` or until every partner with a count has all its results.
    Steady { rate: f64, count: Option<u64> },
    /// `count` requests as fast as the intake takes them (`--concurrency` senders).
    Burst { count: u64 },
}

impl Pace {
    fn count(self) -> Option<u64> {
        match self {
            Pace::Steady { count, .. } => count,
            Pace::Burst { count } => Some(count),
        }
    }
}

/// One `--pace CODE:…` as given.
#[derive(Debug, Clone, PartialEq)]
pub struct PaceArg {
    pub partner: String,
    pub pace: Pace,
}

/// `CODE:RATE`, `CODE:RATE:COUNT` or `CODE:burst:COUNT`.
pub fn parse_pace(text: &str) -> Result<PaceArg, String> {
    const FORMS: &str = "CODE:RATE, CODE:RATE:COUNT or CODE:burst:COUNT";
    let parts: Vec<&str> = text.split(':').map(str::trim).collect();
    let (code, how, count) = match parts.as_slice() {
        [code, how] => (*code, *how, None),
        [code, how, count] => (*code, *how, Some(*count)),
        _ => return Err(format!("`{text}` is not {FORMS}")),
    };
    if code.is_empty() {
        return Err(format!("`{text}` names no partner ({FORMS})"));
    }
    let count = match count {
        None => None,
        Some(count) => match count.parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(format!(
                    "`{text}`: the COUNT `{count}` is not a whole number above 0"
                ));
            }
        },
    };
    let pace = if how.eq_ignore_ascii_case("burst") {
        match count {
            Some(count) => Pace::Burst { count },
            None => {
                return Err(format!(
                    "`{text}`: a burst needs its COUNT ({code}:burst:COUNT)"
                ));
            }
        }
    } else {
        match how.parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 => Pace::Steady { rate, count },
            _ => {
                return Err(format!(
                    "`{text}`: `{how}` is neither a rate above 0 (requests/s) nor `burst`"
                ));
            }
        }
    };
    Ok(PaceArg {
        partner: code.to_owned(),
        pace,
    })
}

/// One partner of the run, checked against the configuration.
#[derive(Debug, Clone)]
struct PartnerPlan {
    code: String,
    secret: SecretString,
    pace: Pace,
}

/// A checked `--pace` run.
#[derive(Debug, Clone)]
pub struct PartnersPlan {
    run_id: String,
    target: url::Url,
    partners: Vec<PartnerPlan>,
    /// Senders of each burst.
    concurrency: usize,
    /// Unanswered requests of each steady partner at most.
    max_in_flight: usize,
    /// How long the partners with a rate and no count send.
    duration: Option<Duration>,
    mix: Mix,
    /// The request content; `partner` and `secret` are replaced by each partner's.
    payload: PayloadSpec,
    amqp_url: SecretString,
    results_exchange: String,
    result_timeout: Duration,
    request_timeout: Duration,
    worker_metrics: Option<Scraper>,
    progress: bool,
}

impl PartnersPlan {
    /// Checks `--pace` and what goes with it against the configuration's partners.
    pub fn new(defaults: &Defaults, args: &LoadgenArgs) -> anyhow::Result<PartnersPlan> {
        if args.pace.is_empty() {
            bail!("--pace: give at least one partner");
        }
        let mut partners: Vec<PartnerPlan> = Vec::new();
        for given in &args.pace {
            if partners.iter().any(|p| p.code == given.partner) {
                bail!("--pace: partner `{}` is given twice", given.partner);
            }
            let Some((_, secret)) = defaults
                .partners
                .iter()
                .find(|(code, _)| *code == given.partner)
            else {
                let known: Vec<&str> = defaults.partners.iter().map(|(c, _)| c.as_str()).collect();
                bail!(
                    "--pace: partner `{}` is not in the configuration's [[partners]] (configured: {})",
                    given.partner,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                );
            };
            partners.push(PartnerPlan {
                code: given.partner.clone(),
                secret: secret.clone(),
                pace: given.pace,
            });
        }
        let counted = partners.iter().any(|p| p.pace.count().is_some());
        if args.duration.is_none() && !counted {
            bail!(
                "--pace: no partner has a COUNT, so nothing ends the run: give --duration, or a \
                 COUNT (CODE:RATE:COUNT or CODE:burst:COUNT)"
            );
        }
        if args.duration.is_some_and(|d| d.is_zero()) {
            bail!("--duration must be above 0");
        }
        let concurrency = match args.concurrency {
            Some(0) => bail!("--concurrency must be above 0"),
            Some(n) => n,
            None => DEFAULT_CONCURRENCY,
        };
        if args.max_in_flight == 0 {
            bail!("--max-in-flight must be above 0");
        }
        let worker_metrics = if args.worker_metrics.is_empty() {
            None
        } else {
            Some(Scraper::new(&args.worker_metrics, args.request_timeout)?)
        };
        let request = &args.request;
        let payload = PayloadSpec {
            partner: String::new(),
            secret: SecretString::from(""),
            pm_id: request.pm_id.clone(),
            plan_id: request.plan_id.clone(),
            amount: request.amount.clone(),
            currency: request.currency.clone(),
            email: request.email.clone(),
            customers: request.customers,
        };
        Ok(PartnersPlan {
            run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            target: super::target(defaults, args)?,
            partners,
            concurrency,
            max_in_flight: args.max_in_flight,
            duration: args.duration,
            mix: Mix {
                duplicate: args.duplicate_share,
                conflict: args.conflict_share,
                invalid: args.invalid_share,
                decline: args.decline_share,
            },
            payload,
            amqp_url: defaults.amqp_url.clone(),
            results_exchange: format!("{}.results", defaults.amqp_prefix),
            result_timeout: args.result_timeout,
            request_timeout: args.request_timeout,
            worker_metrics,
            progress: !args.quiet,
        })
    }
}

/// What one partner's sender and follower produced.
struct Finished {
    index: usize,
    sent: SendOutcome,
    results: FollowOutcome,
}

/// Runs every partner at once and reports each; `run` prints it, tests read it.
pub async fn execute(
    plan: &PartnersPlan,
    shutdown: &CancellationToken,
) -> anyhow::Result<PartnersReport> {
    if plan.mix.duplicate + plan.mix.conflict + plan.mix.invalid > 1.0 + 1e-9 {
        bail!("the duplicate, conflict and invalid shares add up to more than 1");
    }
    let live = Arc::new(Live::default());
    let connections = plan.concurrency.max(plan.max_in_flight) * plan.partners.len();
    let sender = Arc::new(HttpSender::new(
        &plan.target,
        connections,
        plan.request_timeout,
        None,
    )?);
    let before = match &plan.worker_metrics {
        Some(scraper) => Some(
            scraper
                .calls()
                .await
                .context("--worker-metrics: reading the workers' Stripe calls before the run")?,
        ),
        None => None,
    };
    // Every follower is bound before the first request, so no result event slips past unseen.
    let mut ready = Vec::with_capacity(plan.partners.len());
    for (index, partner) in plan.partners.iter().enumerate() {
        let spec = PayloadSpec {
            partner: partner.code.clone(),
            secret: partner.secret.clone(),
            ..plan.payload.clone()
        };
        // One run id per partner: each follower keeps only its own partner's payIds.
        let generator = Arc::new(Generator::new(
            spec,
            &format!("{}-{index}", plan.run_id),
            plan.mix,
            partner.pace.count(),
        ));
        let follow = FollowSpec {
            amqp_url: plan.amqp_url.clone(),
            exchange: plan.results_exchange.clone(),
            partner: partner.code.clone(),
            result_timeout: plan.result_timeout,
        };
        let follower = Follower::start(&follow, generator.pay_id_prefix(), live.clone())
            .await
            .with_context(|| format!("following partner {}'s result events", partner.code))?;
        ready.push((partner.clone(), generator, follower));
    }
    let stop_sampling = CancellationToken::new();
    let sampler = plan
        .worker_metrics
        .clone()
        .map(|scraper| scraper.sample(stop_sampling.clone()));
    let total = plan
        .partners
        .iter()
        .map(|p| p.pace.count())
        .sum::<Option<u64>>();
    let progress = Progress::start(live.clone(), total, plan.duration, plan.progress);

    let started = Instant::now();
    // Partners with a rate and no count send until this is cancelled (or `--duration`).
    let open_ended = shutdown.child_token();
    let mut counted = JoinSet::new();
    let mut open = JoinSet::new();
    for (index, (partner, generator, follower)) in ready.into_iter().enumerate() {
        let (pacing, limit, until) = match partner.pace {
            Pace::Burst { count } => (
                Pacing::Closed {
                    concurrency: plan.concurrency,
                },
                Limit {
                    requests: Some(count),
                    duration: None,
                },
                shutdown.clone(),
            ),
            Pace::Steady { rate, count } => (
                Pacing::Open {
                    rate,
                    max_in_flight: plan.max_in_flight,
                },
                Limit {
                    requests: count,
                    duration: count.map_or(plan.duration, |_| None),
                },
                if count.is_some() {
                    shutdown.clone()
                } else {
                    open_ended.clone()
                },
            ),
        };
        let (sender, live, shutdown) = (sender.clone(), live.clone(), shutdown.clone());
        let task = async move {
            let mut sent = drive::drive(pacing, limit, generator, sender, live, &until).await;
            // Stopping an open-ended partner is the plan, not an interruption.
            sent.interrupted = shutdown.is_cancelled();
            let expected: HashMap<String, Instant> = sent
                .samples
                .iter()
                .filter(|s| s.kind == Kind::Fresh && s.answer.is_accepted())
                .map(|s| (s.pay_id.clone(), s.sent_at))
                .collect();
            let results = follower.finish(expected, started, &shutdown).await;
            Finished {
                index,
                sent,
                results,
            }
        };
        if partner.pace.count().is_some() {
            counted.spawn(task);
        } else {
            open.spawn(task);
        }
    }
    let mut finished: Vec<Finished> = Vec::with_capacity(plan.partners.len());
    while let Some(joined) = counted.join_next().await {
        finished.push(joined.map_err(|e| anyhow!("a partner's sender stopped: {e}"))?);
    }
    if plan.duration.is_none() {
        open_ended.cancel();
    }
    while let Some(joined) = open.join_next().await {
        finished.push(joined.map_err(|e| anyhow!("a partner's sender stopped: {e}"))?);
    }
    progress.finish().await;
    stop_sampling.cancel();
    let samples = match sampler {
        Some(sampler) => sampler.finish().await,
        None => Vec::new(),
    };
    let after = match &plan.worker_metrics {
        Some(scraper) => Some(scraper.calls().await.map_err(|e| e.to_string())),
        None => None,
    };
    finished.sort_by_key(|f| f.index);
    let runs = finished
        .into_iter()
        .map(|f| {
            let partner = &plan.partners[f.index];
            report::PartnerRun {
                code: partner.code.clone(),
                pace: partner.pace,
                max_in_flight: plan.max_in_flight,
                concurrency: plan.concurrency,
                sent: f.sent,
                results: f.results,
            }
        })
        .collect();
    Ok(report::build(
        report::Header {
            run_id: plan.run_id.clone(),
            target: plan.target.to_string(),
            started,
            interrupted: shutdown.is_cancelled(),
        },
        runs,
        report::Calls {
            before,
            samples,
            after,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::net::SocketAddr;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        loadgen: LoadgenArgs,
    }

    fn args(flags: &[&str]) -> Result<LoadgenArgs, clap::Error> {
        Flags::try_parse_from(["loadgen"].iter().chain(flags)).map(|f| f.loadgen)
    }

    fn defaults() -> Defaults {
        Defaults {
            partners: vec![
                ("A".into(), SecretString::from("sa")),
                ("B".into(), SecretString::from("sb")),
            ],
            intake_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            amqp_url: SecretString::from("amqp://127.0.0.1:5672/%2f"),
            amqp_prefix: "t".into(),
            webhook_secret: None,
            stripe_api_base: String::new(),
            push_partners: Vec::new(),
        }
    }

    fn plan(flags: &[&str]) -> anyhow::Result<PartnersPlan> {
        PartnersPlan::new(&defaults(), &args(flags)?)
    }

    #[test]
    fn a_pace_is_a_rate_a_rate_and_count_or_a_burst() {
        let pace = |text| parse_pace(text).map(|p| (p.partner, p.pace));
        assert_eq!(
            pace("A:2"),
            Ok((
                "A".into(),
                Pace::Steady {
                    rate: 2.0,
                    count: None
                }
            ))
        );
        assert_eq!(
            pace("B:0.5:30"),
            Ok((
                "B".into(),
                Pace::Steady {
                    rate: 0.5,
                    count: Some(30)
                }
            ))
        );
        assert_eq!(
            pace("P000818:burst:3000"),
            Ok(("P000818".into(), Pace::Burst { count: 3000 }))
        );
        for bad in [
            "A",
            "A:",
            ":2",
            "A:0",
            "A:-1",
            "A:NaN",
            "A:fast",
            "A:burst",
            "A:burst:0",
            "A:2:1.5",
            "A:2:3:4",
        ] {
            assert!(parse_pace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_pace_is_refused_by_the_flag() {
        // (The text names the flag where clap has its `error-context`, as in the binary.)
        let error = args(&["--pace", "A:burst"]).expect_err("refused");
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn every_paced_partner_must_be_configured_once() {
        let error = plan(&["--pace", "A:2:10", "--pace", "C:1:5"]).expect_err("C is unknown");
        let text = error.to_string();
        assert!(
            text.contains("--pace") && text.contains("`C`") && text.contains("A, B"),
            "{text}"
        );
        let error = plan(&["--pace", "A:2:10", "--pace", "A:burst:5"]).expect_err("twice");
        assert!(error.to_string().contains("twice"), "{error}");
    }

    #[test]
    fn something_must_end_the_run() {
        assert!(plan(&["--pace", "A:2"]).is_err(), "no count, no duration");
        assert!(plan(&["--pace", "A:2", "--duration", "10s"]).is_ok());
        assert!(plan(&["--pace", "A:burst:10", "--pace", "B:2"]).is_ok());
    }

    #[test]
    fn pace_does_not_mix_with_the_single_partner_modes() {
        for flags in [
            &["--pace", "A:2:5", "--rate", "3"][..],
            &["--pace", "A:2:5", "--requests", "3"],
            &["--pace", "A:2:5", "--partner", "A"],
            &["--pace", "A:2:5", "--baseline"],
            &["--pace", "A:2:5", "--no-follow"],
            &["--worker-metrics", "http://127.0.0.1:9090"],
        ] {
            assert!(args(flags).is_err(), "{flags:?}");
        }
        let error = plan(&["--pace", "A:2:5", "--worker-metrics", "127.0.0.1:9090"])
            .expect_err("not a URL");
        assert!(error.to_string().contains("--worker-metrics"), "{error}");
    }
}
