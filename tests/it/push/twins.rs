//! The push simulation's attempt-log twin held to the real one: the same sequences of records,
//! attempts, failures and successes run against Redis (the Lua scripts of `src/store/push.rs`)
//! and against `MemoryPushLog` (tests/simulate/push/twins.rs), and must answer alike.

use std::time::Duration;

use autorenew::domain::push::{AttemptRecord, DeliveryStatus};
use autorenew::push::ports::{BreakerRule, PushLog};
use autorenew::store::{NewNotification, Store};

#[allow(dead_code)]
#[path = "../../simulate/push/twins.rs"]
mod sim_twins;

use crate::helpers::{SHARED_AMQP, SHARED_REDIS, delete_keys, test_settings};

const RETENTION: Duration = Duration::from_secs(3600);

fn event<'a>(webhook_id: &'a str, event_id: &'a str) -> NewNotification<'a> {
    NewNotification {
        webhook_id,
        event_id,
        kind: "autorenew.subscription.succeeded",
        time: "2027-01-15T08:00:00Z",
        pay_id: "pay-1",
        body: b"{}",
        time_ms: 1_800_000_000_000,
    }
}

fn attempt(status: Option<u16>) -> AttemptRecord {
    AttemptRecord {
        at: "2027-01-15T08:00:01Z".into(),
        http_status: status,
        error: None,
        duration_ms: 3,
        trigger: "scheduled".into(),
    }
}

/// One step of a sequence, and what each log answered.
async fn run(log: &dyn PushLog, partner: &str) -> Vec<String> {
    use DeliveryStatus::{Delivered, Failed, Pending};
    let rule = BreakerRule {
        failures: 3,
        cooldown: Duration::from_secs(60),
        longest_cooldown: Duration::from_secs(600),
        disable_after: Duration::from_secs(86_400),
    };
    let mut answers = Vec::new();
    let mut note = |step: &str, answer: String| answers.push(format!("{step}: {answer}"));
    let (a, b) = (event("msg_a", "E-a"), event("msg_b", "E-b"));
    note(
        "record a",
        format!("{:?}", log.record(partner, &a, RETENTION).await),
    );
    note(
        "record a again",
        format!("{:?}", log.record(partner, &a, RETENTION).await),
    );
    let failed = attempt(Some(503));
    note(
        "a fails, pending",
        format!(
            "{:?}",
            log.attempt(partner, "msg_a", &failed, Some(Pending), RETENTION)
                .await
        ),
    );
    note(
        "a spent, failed",
        format!(
            "{:?}",
            log.attempt(partner, "msg_a", &failed, Some(Failed), RETENTION)
                .await
        ),
    );
    note(
        "a recovered",
        format!(
            "{:?}",
            log.attempt(
                partner,
                "msg_a",
                &attempt(Some(200)),
                Some(Delivered),
                RETENTION
            )
            .await
        ),
    );
    note(
        "a late failure of a copy",
        format!(
            "{:?}",
            log.attempt(partner, "msg_a", &failed, Some(Pending), RETENTION)
                .await
        ),
    );
    note(
        "record a after delivery",
        format!("{:?}", log.record(partner, &a, RETENTION).await),
    );
    note(
        "an attempt of an unknown record",
        format!(
            "{:?}",
            log.attempt(partner, "msg_zz", &failed, Some(Pending), RETENTION)
                .await
        ),
    );
    note(
        "record b",
        format!("{:?}", log.record(partner, &b, RETENTION).await),
    );
    note(
        "b resend fails, status kept",
        format!(
            "{:?}",
            log.attempt(partner, "msg_b", &failed, None, RETENTION)
                .await
        ),
    );
    for n in 1..=4 {
        note(
            &format!("failure {n}"),
            format!("{:?}", log.failure(partner, rule).await),
        );
    }
    // A 2xx's attempt closes the breaker in its own script.
    note(
        "success: b delivered",
        format!(
            "{:?}",
            log.attempt(
                partner,
                "msg_b",
                &attempt(Some(200)),
                Some(Delivered),
                RETENTION
            )
            .await
        ),
    );
    for n in 1..=3 {
        note(
            &format!("failure {n} after the success"),
            format!("{:?}", log.failure(partner, rule).await),
        );
    }
    answers
}

#[tokio::test]
async fn the_attempt_log_twin_answers_as_the_redis_scripts_do() {
    let settings = test_settings(SHARED_AMQP, SHARED_REDIS);
    let store = Store::new(&settings.redis).expect("store");
    let clock = sim_twins::SimClock {
        start: tokio::time::Instant::now(),
    };
    let twin = sim_twins::MemoryPushLog::new(clock);
    let real = run(&store, "P1").await;
    let memory = run(&twin, "P1").await;
    delete_keys(SHARED_REDIS, &settings.redis.key_prefix).await;
    assert_eq!(real, memory);
    // The sequence means something: the record stays delivered, the breaker opens at the
    // third failure and, closed by a delivered attempt, at the third failure after it.
    assert!(
        real.contains(&"a late failure of a copy: Ok(Some(Delivered))".to_owned()),
        "{real:#?}"
    );
    assert!(
        real.contains(&"failure 3: Ok(BreakerStep { opened: true, disabled: false })".to_owned()),
        "{real:#?}"
    );
    assert!(
        real.contains(&"failure 4: Ok(BreakerStep { opened: false, disabled: false })".to_owned()),
        "{real:#?}"
    );
    assert!(
        real.contains(
            &"failure 3 after the success: Ok(BreakerStep { opened: true, disabled: false })"
                .to_owned()
        ),
        "{real:#?}"
    );
}
