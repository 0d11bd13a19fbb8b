//! `autorenew loadgen`: signed load against a running intake, every job followed to its result
//! event, and a report of throughput, latency and correctness; or, with `--baseline`, the same
//! bodies published straight to a scratch queue, the ceiling the intake's figure is measured
//! against.
//!
//! loadgen talks to the service only as an outside client would: the sign (a partner has it
//! too), HTTP, and the results exchange. It does not depend on the service crate (docs/design.md,
//! "Crates"): the `autorenew` binary reads the service's configuration and gives loadgen only
//! its [`Defaults`] (the partners and their secrets, the intake's address, the broker's URL and
//! prefix, the webhook secret, the simulator's URL).
//!
//! - [`payload`]: the requests and their mix (fresh, duplicate, conflict, invalid).
//! - [`drive`]: open-loop and closed-loop pacing, shared by HTTP and the baseline.
//! - [`http`]: the HTTP client and how an answer is read.
//! - [`follow`]: the result-event subscriber.
//! - [`baseline`]: publishing with confirms to a scratch quorum queue.
//! - [`report`]: samples and their verdicts, the table and the JSON; [`percentiles`] the figures.
//! - [`partners`]: `--pace`, several partners at once, each paced and reported on its own;
//!   [`metrics`] reads the workers' Stripe calls for it.

mod baseline;
mod drive;
mod follow;
mod http;
mod metrics;
pub mod partners;
mod payload;
mod percentiles;
mod progress;
pub mod push;
mod renewals;
mod report;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub use drive::{Limit, Pacing};
pub use follow::{FollowOutcome, FollowSpec};
pub use payload::{DECLINING_PM_ID, Mix, PayloadSpec};
pub use report::{Percentiles, Report};

/// Requests sent when neither `--requests` nor `--duration` is given.
const DEFAULT_REQUESTS: u64 = 1000;
/// Senders of the closed loop (and of each `--pace` burst) when `--concurrency` is not given.
const DEFAULT_CONCURRENCY: usize = 32;

/// Flags of `autorenew loadgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// The intake's base URL [default: http://<intake.listen> of the configuration].
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Allow a target that is not on this machine (loadgen refuses one by default).
    #[arg(long)]
    pub allow_remote: bool,

    /// Open loop: send this many requests per second on a fixed schedule, whatever the answers.
    #[arg(long, value_name = "PER_SECOND", conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Closed loop: this many senders, each sending back-to-back [default: 32].
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Open loop: at most this many requests unanswered at once (later sends wait, and count
    /// as late).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Stop after this many requests [default: 1000 when --duration is not given].
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Stop sending after this long (e.g. 30s, 2m, 500ms).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Share of requests that resend an accepted request (fresh tradeTime and sign).
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub duplicate_share: f64,
    /// Share of requests that reuse an accepted payId with another amount (expect 409).
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub conflict_share: f64,
    /// Share of requests with a bad sign, a missing field or a bad amount (expect 400/401).
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub invalid_share: f64,
    /// Share of fresh requests that use pm_card_chargeDeclined (their jobs should fail).
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub decline_share: f64,

    /// After the creations and their results, advance the simulator this many periods and
    /// check that every subscription created active is announced renewed that many times (or
    /// `renewal_failed`); reports the time from the advance to the last renewal event.
    #[arg(long, value_name = "N", conflicts_with_all = ["no_follow", "baseline"])]
    pub renewals: Option<u32>,
    /// The simulator whose clock `--renewals` moves [default: `stripe.api_base`].
    #[arg(long, value_name = "URL", requires = "renewals")]
    pub sim: Option<url::Url>,

    /// POST signed Stripe events (`invoice.paid`, one id each) to the intake's `/stripe/webhook`
    /// instead of partner requests: the intake's webhook figure. Signed with the first of
    /// `stripe.webhook_secrets`; nothing to follow.
    #[arg(long, conflicts_with_all = ["baseline", "renewals", "duplicate_share", "conflict_share", "invalid_share", "decline_share"])]
    pub webhooks: bool,

    /// The partner push under load: publish result events straight to the results exchange
    /// for each pushing partner of the configuration, `--rate` per second each, and follow
    /// them to `autorenew receiver` (`--receiver`): delivered, repeats, and the latency from
    /// the event's `time` to the 2xx. With `--baseline`, the notifier's HTTP client posts the
    /// same bodies straight to the receiver instead (the raw rate).
    #[arg(long, conflicts_with_all = ["webhooks", "renewals", "duplicate_share", "conflict_share", "invalid_share", "decline_share", "target", "concurrency"])]
    pub push: bool,
    /// `--push`: only these partners (comma-separated) [default: every partner with a push].
    #[arg(long, value_name = "CODES", value_delimiter = ',', requires = "push")]
    pub push_partners: Vec<String>,
    /// `--push`: the `autorenew receiver` the partners' push URLs point at.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8090",
        requires = "push"
    )]
    pub receiver: String,

    /// Several partners at once, each paced on its own; repeat for each partner (configured
    /// in `[[partners]]`). `CODE:RATE`: RATE requests/s, for --duration or, without it, until
    /// every partner with a COUNT has all its results; `CODE:RATE:COUNT`: COUNT requests at
    /// RATE/s; `CODE:burst:COUNT`: COUNT requests as fast as the intake takes them
    /// (--concurrency senders). Each partner signs with its configured secret. Reports each
    /// partner's requests, results and request-to-result latency.
    #[arg(
        long,
        value_name = "CODE:RATE[:COUNT]|CODE:burst:COUNT",
        value_parser = partners::parse_pace,
        conflicts_with_all = ["rate", "requests", "baseline", "push", "webhooks", "renewals", "no_follow", "record", "partner"]
    )]
    pub pace: Vec<partners::PaceArg>,
    /// `--pace`: the workers' metrics endpoints (comma-separated, e.g.
    /// http://127.0.0.1:9090), read before, during and after the run for the Stripe calls made
    /// for each partner (`autorenew_stripe_requests_total` by its `partner` label; n/a without
    /// it).
    #[arg(long, value_name = "URL,URL", value_delimiter = ',', requires = "pace")]
    pub worker_metrics: Vec<String>,

    /// Measure the intake only; do not wait for result events.
    #[arg(long)]
    pub no_follow: bool,
    /// After the last send, how long to wait for result events before counting "no result".
    #[arg(long, value_name = "TIME", default_value = "120s", value_parser = parse_duration)]
    pub result_timeout: Duration,
    /// Give up on one HTTP request (or one broker confirm) after this long.
    #[arg(long, value_name = "TIME", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// The raw baseline: publish the same bodies to a scratch quorum queue with confirms (no
    /// HTTP, no checks), the ceiling for the intake's figure.
    #[arg(long, conflicts_with_all = ["duplicate_share", "conflict_share", "invalid_share", "target"])]
    pub baseline: bool,

    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write every answer to this file, one JSON object a line (`payId`, `kind`, `status`,
    /// `code`, `latency_ms`, `at_ms`: when it was due, from the first): what a checker needs to
    /// hold the service to each answer.
    #[arg(long, value_name = "PATH")]
    pub record: Option<std::path::PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,

    /// What every request carries (boxed: clap's subcommand enum stays small). Last, since its
    /// help heading applies to everything after it.
    #[command(flatten)]
    pub request: Box<RequestArgs>,
}

/// The content of the requests.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Request content")]
pub struct RequestArgs {
    /// The partner code [default: the configuration's first partner].
    #[arg(long, value_name = "CODE")]
    pub partner: Option<String>,
    /// The partner's secret [default: the configured partner's] (or AUTORENEW_LOADGEN_SECRET).
    #[arg(long, env = "AUTORENEW_LOADGEN_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The payment method of every request.
    #[arg(long, default_value = "pm_card_visa")]
    pub pm_id: String,
    /// The plan of every request.
    #[arg(long, default_value = "PLAN_MONTHLY_1GB")]
    pub plan_id: String,
    /// `payAmount`; conflicts send it with a leading 1 (19.99 → 119.99).
    #[arg(long, default_value = "19.99")]
    pub amount: String,
    /// `payCurrency`.
    #[arg(long, default_value = "usd")]
    pub currency: String,
    /// One email for every request [default: a distinct one per payId].
    #[arg(long)]
    pub email: Option<String>,
    /// Spread the requests over this many customers (emails), in turn: all but the first N
    /// come from returning customers [default: a distinct one per payId].
    #[arg(long, value_name = "N", conflicts_with = "email", value_parser = clap::value_parser!(u64).range(1..))]
    pub customers: Option<u64>,
}

/// What loadgen takes from the service's configuration (`config.toml` and `AUTORENEW__…`): the
/// defaults of its flags, nothing more. The `autorenew` binary fills it in from its settings.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// `partners`, as (code, secret): `--partner` finds its secret here; the first is the
    /// default partner.
    pub partners: Vec<(String, SecretString)>,
    /// `intake.listen`: the default `--target` (an unspecified address means this machine).
    pub intake_listen: SocketAddr,
    /// `amqp.url`: the broker the result events (and `--baseline`'s scratch queue) are on.
    pub amqp_url: SecretString,
    /// `amqp.prefix`: the results exchange is `<prefix>.results`.
    pub amqp_prefix: String,
    /// The first of `stripe.webhook_secrets`: what `--webhooks` signs with.
    pub webhook_secret: Option<SecretString>,
    /// `stripe.api_base`: the simulator `--renewals` advances unless `--sim` (empty: none).
    pub stripe_api_base: String,
    /// The partners with `[partners.push]`, as (code, push secrets `whsec_…`): `--push`'s
    /// partners and what its `--baseline` signs with.
    pub push_partners: Vec<(String, Vec<SecretString>)>,
}

/// A checked run: everything [`execute`] needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub run_id: String,
    pub pacing: Pacing,
    pub limit: Limit,
    pub mix: Mix,
    pub payload: PayloadSpec,
    pub mode: Mode,
    pub request_timeout: Duration,
    pub progress: bool,
    pub record: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone)]
pub enum Mode {
    /// Signed requests to an intake; `follow` waits for their result events.
    Http {
        target: url::Url,
        follow: Option<FollowSpec>,
        /// `--webhooks`: signed Stripe events to `/stripe/webhook`, with this secret.
        webhook_secret: Option<SecretString>,
        /// `--renewals`: how many periods, and the simulator to advance.
        renewals: Option<Box<(u32, url::Url)>>,
    },
    /// Confirmed publishes to a scratch quorum queue, deleted at the end.
    Baseline {
        amqp_url: SecretString,
        queue: String,
    },
}

impl Plan {
    /// Checks the flags against each other and fills the defaults from the configuration's.
    pub fn new(defaults: &Defaults, args: &LoadgenArgs) -> anyhow::Result<Plan> {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let pacing = match (args.rate, args.concurrency) {
            (Some(rate), _) if !(rate.is_finite() && rate > 0.0) => {
                bail!("--rate must be above 0")
            }
            (Some(rate), _) if args.max_in_flight == 0 => {
                bail!("--max-in-flight must be above 0 (with --rate {rate})")
            }
            (Some(rate), _) => Pacing::Open {
                rate,
                max_in_flight: args.max_in_flight,
            },
            (None, Some(0)) => bail!("--concurrency must be above 0"),
            (None, concurrency) => Pacing::Closed {
                concurrency: concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            },
        };
        let limit = match (args.requests, args.duration) {
            (Some(0), _) => bail!("--requests must be above 0"),
            (_, Some(d)) if d.is_zero() => bail!("--duration must be above 0"),
            (None, None) => Limit {
                requests: Some(DEFAULT_REQUESTS),
                duration: None,
            },
            (requests, duration) => Limit { requests, duration },
        };
        let mix = Mix {
            duplicate: args.duplicate_share,
            conflict: args.conflict_share,
            invalid: args.invalid_share,
            decline: args.decline_share,
        };
        if mix.duplicate + mix.conflict + mix.invalid > 1.0 + 1e-9 {
            bail!("the duplicate, conflict and invalid shares add up to more than 1");
        }
        let (partner, secret) = partner(defaults, args)?;
        let request = &args.request;
        let payload = PayloadSpec {
            partner: partner.clone(),
            secret,
            pm_id: request.pm_id.clone(),
            plan_id: request.plan_id.clone(),
            amount: request.amount.clone(),
            currency: request.currency.clone(),
            email: request.email.clone(),
            customers: request.customers,
        };
        let mode = if args.baseline {
            Mode::Baseline {
                amqp_url: defaults.amqp_url.clone(),
                queue: format!("{}.loadgen-baseline-{run_id}", defaults.amqp_prefix),
            }
        } else {
            let target = target(defaults, args)?;
            let webhook_secret = match (args.webhooks, &defaults.webhook_secret) {
                (false, _) => None,
                (true, Some(secret)) => Some(secret.clone()),
                (true, None) => {
                    bail!("--webhooks signs with `stripe.webhook_secrets`: none is set")
                }
            };
            let follow = (!args.no_follow && !args.webhooks).then(|| FollowSpec {
                amqp_url: defaults.amqp_url.clone(),
                exchange: format!("{}.results", defaults.amqp_prefix),
                partner,
                result_timeout: args.result_timeout,
            });
            let renewals = match args.renewals {
                None => None,
                Some(0) => bail!("--renewals must be above 0"),
                Some(periods) => Some(Box::new((periods, simulator(defaults, args)?))),
            };
            Mode::Http {
                target,
                follow,
                webhook_secret,
                renewals,
            }
        };
        Ok(Plan {
            run_id,
            pacing,
            limit,
            mix,
            payload,
            mode,
            request_timeout: args.request_timeout,
            progress: !args.quiet,
            record: args.record.clone(),
        })
    }
}

fn partner(defaults: &Defaults, args: &LoadgenArgs) -> anyhow::Result<(String, SecretString)> {
    let args = &args.request;
    let configured = match &args.partner {
        Some(code) => defaults.partners.iter().find(|(known, _)| known == code),
        None => defaults.partners.first(),
    };
    let code = match (&args.partner, configured) {
        (Some(code), _) => code.clone(),
        (None, Some((code, _))) => code.clone(),
        (None, None) => bail!("the configuration has no partner; give --partner and --secret"),
    };
    let secret = match (&args.secret, configured) {
        (Some(secret), _) => SecretString::from(secret.as_str()),
        (None, Some((_, secret))) => secret.clone(),
        (None, None) => bail!("partner `{code}` is not in the configuration; give --secret"),
    };
    Ok((code, secret))
}

/// The intake's URL: `--target`, else the configured listen address (an unspecified address
/// such as 0.0.0.0 means this machine). Only loopback unless `--allow-remote`.
fn target(defaults: &Defaults, args: &LoadgenArgs) -> anyhow::Result<url::Url> {
    let text = match &args.target {
        Some(target) => target.clone(),
        None => {
            let mut listen = defaults.intake_listen;
            if listen.ip().is_unspecified() {
                listen.set_ip(IpAddr::from([127, 0, 0, 1]));
            }
            format!("http://{listen}")
        }
    };
    checked_target(&text, args.allow_remote)
}

/// The simulator `--renewals` advances: `--sim`, else `stripe.api_base` (which `autorenew run`
/// leaves empty in the file: its simulator listens on `--sim-listen`, 127.0.0.1:12111).
fn simulator(defaults: &Defaults, args: &LoadgenArgs) -> anyhow::Result<url::Url> {
    match &args.sim {
        Some(url) => Ok(url.clone()),
        None if !defaults.stripe_api_base.trim().is_empty() => {
            url::Url::parse(defaults.stripe_api_base.trim()).context("`stripe.api_base`")
        }
        None => bail!(
            "--renewals needs the simulator: give --sim (e.g. http://127.0.0.1:12111 under \
             `autorenew run`)"
        ),
    }
}

fn checked_target(text: &str, allow_remote: bool) -> anyhow::Result<url::Url> {
    let url = url::Url::parse(text).with_context(|| format!("--target `{text}`"))?;
    if url.scheme() != "http" {
        bail!("--target `{text}`: loadgen speaks plain http:// only");
    }
    let host = url.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback && !allow_remote {
        bail!("--target `{text}` is not on this machine; add --allow-remote if you mean it");
    }
    Ok(url)
}

/// Runs the plan and returns its report; `run` prints it, tests read it.
pub async fn execute(plan: &Plan, shutdown: &CancellationToken) -> anyhow::Result<Report> {
    let live = Arc::new(progress::Live::default());
    let generator = Arc::new(payload::Generator::new(
        plan.payload.clone(),
        &plan.run_id,
        plan.mix,
        plan.limit.requests,
    ));
    let header = |mode, target| report::Header {
        mode,
        run_id: plan.run_id.clone(),
        target,
        pacing: match plan.pacing {
            Pacing::Open {
                rate,
                max_in_flight,
            } => report::PacingReport::Open {
                rate,
                max_in_flight,
            },
            Pacing::Closed { concurrency } => report::PacingReport::Closed { concurrency },
        },
    };
    let start_progress = || {
        progress::Progress::start(
            live.clone(),
            plan.limit.requests,
            plan.limit.duration,
            plan.progress,
        )
    };
    match &plan.mode {
        Mode::Http {
            target,
            follow,
            webhook_secret,
            renewals,
        } => {
            let connections = match plan.pacing {
                Pacing::Open { max_in_flight, .. } => max_in_flight,
                Pacing::Closed { concurrency } => concurrency,
            };
            let sender = Arc::new(http::HttpSender::new(
                target,
                connections,
                plan.request_timeout,
                webhook_secret.clone(),
            )?);
            // Bound before the first request, so no result event can slip past unseen.
            let follower = match follow {
                Some(spec) => Some(
                    follow::Follower::start(spec, generator.pay_id_prefix(), live.clone())
                        .await
                        .context(
                            "following result events (--no-follow measures the intake only)",
                        )?,
                ),
                None => None,
            };
            let url = sender.url().to_string();
            let progress = start_progress();
            let started = Instant::now();
            let sent = drive::drive(
                plan.pacing,
                plan.limit,
                generator,
                sender,
                live.clone(),
                shutdown,
            )
            .await;
            let results = match follower {
                Some(follower) => {
                    let expected: HashMap<String, Instant> = sent
                        .samples
                        .iter()
                        .filter(|s| s.kind == payload::Kind::Fresh && s.answer.is_accepted())
                        .map(|s| (s.pay_id.clone(), s.sent_at))
                        .collect();
                    progress.following(expected.len() as u64);
                    let renewed = match renewals {
                        Some(renewals) => Some(
                            follower
                                .follow_renewals(&expected, renewals.0, &renewals.1, shutdown)
                                .await?,
                        ),
                        None => None,
                    };
                    let mut outcome = follower.finish(expected, started, shutdown).await;
                    outcome.renewals = renewed;
                    Some(outcome)
                }
                None => None,
            };
            progress.finish().await;
            if let Some(path) = &plan.record {
                report::write_record(path, &sent.samples)
                    .with_context(|| format!("writing --record {}", path.display()))?;
            }
            Ok(report::Report::build(header("http", url), sent, results))
        }
        Mode::Baseline { amqp_url, queue } => {
            let publisher =
                Arc::new(baseline::Baseline::open(amqp_url, queue, plan.request_timeout).await?);
            let progress = start_progress();
            let sent = drive::drive(
                plan.pacing,
                plan.limit,
                generator,
                publisher.clone(),
                live.clone(),
                shutdown,
            )
            .await;
            progress.finish().await;
            publisher.close().await?;
            let target = format!("queue {queue}");
            Ok(report::Report::build(
                header("baseline", target),
                sent,
                None,
            ))
        }
    }
}

/// `autorenew loadgen`: runs, prints the report, and fails when the run failed its checks or
/// was interrupted.
pub async fn run(
    defaults: Defaults,
    args: LoadgenArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if args.push {
        let report = push::run(&defaults, &args, &shutdown).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", report.to_table());
        }
        if report.missing > 0 || report.failed_sends > 0 {
            bail!(
                "{} events not delivered, {} sends failed",
                report.missing,
                report.failed_sends
            );
        }
        return Ok(());
    }
    if !args.pace.is_empty() {
        let plan = partners::PartnersPlan::new(&defaults, &args)?;
        let report = partners::execute(&plan, &shutdown).await?;
        if args.json {
            println!("{}", report.to_json());
        } else {
            print!("{}", report.to_table());
        }
        if !report.failures.is_empty() {
            bail!("the run failed {} of its checks", report.failures.len());
        }
        if shutdown.is_cancelled() {
            bail!("interrupted: the figures are partial");
        }
        return Ok(());
    }
    let plan = Plan::new(&defaults, &args)?;
    let report = execute(&plan, &shutdown).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if !report.failures.is_empty() {
        bail!("the run failed {} of its checks", report.failures.len());
    }
    // A partial run must not pass for a complete one in a script.
    if shutdown.is_cancelled() {
        bail!("interrupted: the figures are partial");
    }
    Ok(())
}

/// `30`, `30s`, `500ms`, `2m`, `1h`: a plain number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a time like 30s, 500ms or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit `{other}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("`{text}` is not a share between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn only_plain_http_on_this_machine_is_a_target_unless_remote_is_allowed() {
        for local in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:8080",
            "http://127.0.0.2",
        ] {
            assert!(checked_target(local, false).is_ok(), "{local}");
        }
        assert!(checked_target("http://10.0.0.1:8080", false).is_err());
        assert!(checked_target("http://example.com", false).is_err());
        assert!(checked_target("http://10.0.0.1:8080", true).is_ok());
        assert!(checked_target("https://127.0.0.1", true).is_err());
        assert!(checked_target("127.0.0.1:8080", false).is_err());
    }

    #[test]
    fn shares_are_between_zero_and_one() {
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("-0.1").is_err());
        assert!(parse_share("NaN").is_err());
    }
}
