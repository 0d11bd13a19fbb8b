//! `autorenew loadgen --push`: what it reports is what the receiver got, event by event.

use clap::Parser;
use loadgen::LoadgenArgs;
use loadgen::push::{self, PushReport};
use tokio_util::sync::CancellationToken;

use crate::helpers::{OTHER_PARTNER, PARTNER, TestStack};
use crate::wiring::loadgen_defaults;

/// `autorenew loadgen`'s flags, as its subcommand parses them.
#[derive(Debug, Parser)]
struct Flags {
    #[command(flatten)]
    loadgen: LoadgenArgs,
}

/// The flags as the command line would parse them.
fn args(flags: &[&str]) -> LoadgenArgs {
    let argv = ["loadgen", "--quiet", "--push"].iter().chain(flags);
    Flags::try_parse_from(argv)
        .expect("the flags parse")
        .loadgen
}

/// The receiver's base URL: the partners' push URLs without the partner.
fn receiver_base(stack: &TestStack) -> String {
    let url = &stack.settings.partners[0]
        .push
        .as_ref()
        .expect("the stack's partners push")
        .url;
    url.rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .unwrap_or_default()
}

async fn run(stack: &TestStack, flags: &[&str]) -> PushReport {
    let base = receiver_base(stack);
    let mut all = vec![
        "--receiver",
        base.as_str(),
        "--rate",
        "200",
        "--requests",
        "30",
    ];
    all.extend_from_slice(flags);
    push::run(
        &loadgen_defaults(&stack.settings),
        &args(&all),
        &CancellationToken::new(),
    )
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
    let mut stack = TestStack::builder().push_receiver().start().await;
    stack.spawn_notifier().await;
    let report = run(&stack, &[]).await;
    assert_eq!(report.mode, "push");
    assert_every_event_arrived_once(&report);
    // What the receiver verified is what the report says, partner by partner.
    for partner in [PARTNER, OTHER_PARTNER] {
        let counts = stack.receiver().counts(partner);
        assert_eq!((counts.distinct, counts.delivered), (30, 30), "{partner}");
    }
    stack.teardown().await;
}

#[tokio::test]
async fn the_baseline_posts_the_same_bodies_without_a_notifier() {
    let stack = TestStack::builder().push_receiver().start().await;
    let report = run(&stack, &["--baseline"]).await;
    assert_eq!(report.mode, "baseline");
    assert_every_event_arrived_once(&report);
    stack.teardown().await;
}

#[tokio::test]
async fn a_partner_without_a_push_is_refused_by_name() {
    let stack = TestStack::builder().push_receiver().start().await;
    let base = receiver_base(&stack);
    let error = push::run(
        &loadgen_defaults(&stack.settings),
        &args(&["--receiver", &base, "--push-partners", "NOPUSH1"]),
        &CancellationToken::new(),
    )
    .await
    .expect_err("an unknown partner is refused");
    assert!(error.to_string().contains("`NOPUSH1`"), "{error}");
    stack.teardown().await;
}
