//! `autorenew loadgen --push`: what it reports is what the receiver got, event by event.

use autorenew::cli::{Cli, Command};
use autorenew::loadgen::LoadgenArgs;
use autorenew::loadgen::push::{self, PushReport};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use super::bed::Bed;
use crate::helpers::{OTHER_PARTNER, PARTNER};

/// The flags as the command line would parse them.
fn args(flags: &[&str]) -> LoadgenArgs {
    let argv = ["autorenew", "loadgen", "--quiet", "--push"]
        .iter()
        .chain(flags);
    match Cli::try_parse_from(argv).expect("the flags parse").command {
        Command::Loadgen(args) => args,
        _ => panic!("not the loadgen command"),
    }
}

/// The receiver's base URL: the partners' push URLs without the partner.
fn receiver_base(bed: &Bed) -> String {
    let url = &bed.settings.partners[0]
        .push
        .as_ref()
        .expect("the bed's partners push")
        .url;
    url.rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .unwrap_or_default()
}

async fn run(bed: &Bed, flags: &[&str]) -> PushReport {
    let base = receiver_base(bed);
    let mut all = vec![
        "--receiver",
        base.as_str(),
        "--rate",
        "200",
        "--requests",
        "30",
    ];
    all.extend_from_slice(flags);
    push::run(&bed.settings, &args(&all), &CancellationToken::new())
        .await
        .expect("the run completes")
}

fn assert_every_event_arrived_once(report: &PushReport) {
    assert_eq!(report.published, 60, "{report:?}");
    assert_eq!(report.delivered, 60, "{report:?}");
    assert_eq!((report.missing, report.failed_sends), (0, 0), "{report:?}");
    let partners: Vec<&str> = report.partners.iter().map(|p| p.partner.as_str()).collect();
    assert_eq!(partners, [PARTNER, OTHER_PARTNER]);
    for partner in &report.partners {
        assert_eq!(
            (partner.published, partner.delivered),
            (30, 30),
            "{partner:?}"
        );
        assert_eq!(partner.repeats, 0, "{partner:?}");
        let (p50, p99, max) = (
            partner.latency_p50_ms.expect("a p50"),
            partner.latency_p99_ms.expect("a p99"),
            partner.latency_max_ms.expect("a max"),
        );
        assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{partner:?}");
    }
}

#[tokio::test]
async fn a_push_run_counts_each_partner_s_events_delivered_and_their_latency() {
    let mut bed = Bed::start(|_| {}).await;
    bed.spawn_notifier().await;
    let report = run(&bed, &[]).await;
    assert_eq!(report.mode, "push");
    assert_every_event_arrived_once(&report);
    // What the receiver verified is what the report says, partner by partner.
    for partner in [PARTNER, OTHER_PARTNER] {
        let counts = bed.receiver.counts(partner);
        assert_eq!((counts.distinct, counts.delivered), (30, 30), "{partner}");
    }
    bed.teardown().await;
}

#[tokio::test]
async fn the_baseline_posts_the_same_bodies_without_a_notifier() {
    let bed = Bed::start(|_| {}).await;
    let report = run(&bed, &["--baseline"]).await;
    assert_eq!(report.mode, "baseline");
    assert_every_event_arrived_once(&report);
    bed.teardown().await;
}

#[tokio::test]
async fn a_partner_without_a_push_is_refused_by_name() {
    let bed = Bed::start(|_| {}).await;
    let base = receiver_base(&bed);
    let error = push::run(
        &bed.settings,
        &args(&["--receiver", &base, "--push-partners", "NOPUSH1"]),
        &CancellationToken::new(),
    )
    .await
    .expect_err("an unknown partner is refused");
    assert!(error.to_string().contains("`NOPUSH1`"), "{error}");
    bed.teardown().await;
}
