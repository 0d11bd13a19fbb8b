//! `/cancelAutoRenewalRecord` and `/queryAutoRenewalRecord` (docs/partners.md#post-cancelautorenewalrecord), and the
//! store's auto-renewal state they read, against the real RabbitMQ and Redis.

use std::time::Duration;

use autorenew::domain::cancel::CANCEL_MESSAGE_TYPE;
use autorenew::domain::renewal::{Applied, RenewalChange, RenewalError, RenewalUpdate};
use autorenew::domain::{FailureCode, FailureDetail, FinalResult, PartnerCode, PayId, PayKey};
use autorenew::store::Store;
use serde_json::{Value, json};

use crate::helpers::{
    Answer, OTHER_PARTNER, OTHER_SECRET, PARTNER, SECRET, TestApp, TestStack, read_queue,
    valid_request,
};

const CANCEL: &str = "/cancelAutoRenewalRecord";
const QUERY: &str = "/queryAutoRenewalRecord";

fn cancel_request(pay_id: &str, when: Option<&str>) -> Value {
    let mut request = json!({
        "partnerCode": PARTNER,
        "payId": pay_id,
        "tradeType": "cancelAutoRenewalRecord",
        "version": "3.0",
    });
    if let Some(when) = when {
        request["when"] = json!(when);
    }
    request
}

fn query_request(pay_id: &str) -> Value {
    json!({
        "partnerCode": PARTNER,
        "payId": pay_id,
        "tradeType": "queryAutoRenewalRecord",
        "version": "3.0",
    })
}

/// Subscribes a fresh payId and empties the jobs queue of its creation job.
async fn accepted_pay_id(app: &TestApp) -> String {
    let request = valid_request();
    let pay_id = request["payId"].as_str().expect("payId").to_owned();
    assert_eq!(app.subscribe(request).await.status, 200);
    let jobs = read_queue(&jobs(app), 1, Duration::from_secs(3)).await;
    assert_eq!(jobs.len(), 1, "the creation job");
    pay_id
}

fn jobs(app: &TestApp) -> String {
    crate::helpers::lane(app.prefix(), crate::helpers::PARTNER)
}

fn store(app: &TestApp) -> Store {
    Store::new(&app.settings.redis).expect("store")
}

fn partner() -> PartnerCode {
    PartnerCode::parse(PARTNER).expect("partner code")
}

/// A payId of the test's partner.
fn pay(pay_id: &str) -> PayKey {
    PayKey::new(partner(), PayId::parse(pay_id).expect("payId"))
}

fn result(status: &str, failed: bool) -> FinalResult {
    FinalResult {
        status: status.into(),
        customer_id: "cus_1".into(),
        sub_id: if failed {
            String::new()
        } else {
            "sub_1".into()
        },
        product_id: String::new(),
        pay_method: "card".into(),
        error: failed.then(|| FailureDetail {
            code: FailureCode::CardDeclined,
            message: "Your card was declined.".into(),
            stripe_code: Some("card_declined".into()),
            decline_code: Some("generic_decline".into()),
        }),
        attempts: 1,
        accepted_at: "2026-01-01T00:00:00Z".into(),
        completed_at: "2026-01-01T00:00:01Z".into(),
    }
}

fn subscription(status: &str, period_end: i64, at_period_end: bool) -> RenewalChange {
    RenewalChange::Subscription {
        sub_id: "sub_1".into(),
        status: status.into(),
        current_period_end: Some(period_end),
        cancel_at_period_end: at_period_end,
        canceled_at: None,
    }
}

fn update(version: u64, change: RenewalChange) -> RenewalUpdate {
    RenewalUpdate {
        partner_code: partner(),
        version,
        change,
    }
}

async fn cancel(app: &TestApp, pay_id: &str, when: Option<&str>) -> Answer {
    app.post_signed(CANCEL, cancel_request(pay_id, when), SECRET)
        .await
}

#[tokio::test]
async fn a_cancel_of_a_processing_pay_id_is_accepted_and_enqueued_as_a_cancel_job() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let pay_id = accepted_pay_id(app).await;

    let answer = cancel(app, &pay_id, None).await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["operateCode"], "S");
    assert_eq!(answer.body["status"], "processing");
    assert_eq!(answer.body["payId"], pay_id.as_str());
    let messages = read_queue(&jobs(app), 2, Duration::from_secs(3)).await;
    assert_eq!(messages.len(), 1, "one cancel job");
    let message = &messages[0];
    assert_eq!(
        message.properties.kind().as_ref().map(|s| s.as_str()),
        Some(CANCEL_MESSAGE_TYPE)
    );
    assert_eq!(
        message.properties.message_id().as_ref().map(|s| s.as_str()),
        Some(format!("cancel:{PARTNER}:{pay_id}:period_end").as_str())
    );
    assert_eq!(message.properties.delivery_mode(), &Some(2));
    assert_eq!(message.body["payId"], pay_id.as_str());
    assert_eq!(message.body["partnerCode"], PARTNER);
    assert_eq!(message.body["when"], "period_end");
    stack.teardown().await;
}

#[tokio::test]
async fn a_repeated_cancel_answers_like_the_first_and_enqueues_nothing_more() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let pay_id = accepted_pay_id(app).await;

    let first = cancel(app, &pay_id, Some("now")).await;
    let second = cancel(app, &pay_id, Some("now")).await;
    // Even once the subscription is canceled, a repeat of the cancel answers like the first.
    store(app)
        .apply_renewal(
            &pay(&pay_id),
            &update(5, subscription("canceled", 9, false)),
        )
        .await
        .expect("apply");
    let third = cancel(app, &pay_id, Some("now")).await;

    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body, second.body);
    assert_eq!(third.status, 200, "{:?}", third.body);
    assert_eq!(third.body["operateCode"], "S");
    let messages = read_queue(&jobs(app), 2, Duration::from_secs(2)).await;
    assert_eq!(messages.len(), 1, "one cancel job");
    stack.teardown().await;
}

#[tokio::test]
async fn concurrent_copies_of_one_cancel_make_one_job() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let pay_id = accepted_pay_id(app).await;

    let answers = futures_util::future::join_all((0..10).map(|_| cancel(app, &pay_id, None))).await;

    for answer in &answers {
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    let messages = read_queue(&jobs(app), 2, Duration::from_secs(2)).await;
    assert_eq!(messages.len(), 1, "one cancel job");
    stack.teardown().await;
}

#[tokio::test]
async fn unknown_and_other_partners_pay_ids_are_404() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let theirs = valid_request();
    let their_pay_id = theirs["payId"].as_str().expect("payId").to_owned();
    let mut theirs = theirs;
    theirs["partnerCode"] = json!(OTHER_PARTNER);
    let answer = app
        .post_signed("/stripeSubDirectly", theirs, OTHER_SECRET)
        .await;
    assert_eq!(answer.status, 200);

    for pay_id in ["never-sent", their_pay_id.as_str()] {
        let cancelled = cancel(app, pay_id, None).await;
        let queried = app.post_signed(QUERY, query_request(pay_id), SECRET).await;
        for answer in [cancelled, queried] {
            assert_eq!(
                (answer.status, answer.code(), answer.field()),
                (404, "PAY_ID_UNKNOWN", "payId"),
                "{pay_id}: {:?}",
                answer.body
            );
        }
    }
    // Their creation waits in their lane; no cancel went anywhere.
    let theirs = crate::helpers::lane(app.prefix(), OTHER_PARTNER);
    let messages = read_queue(&theirs, 2, Duration::from_secs(2)).await;
    assert_eq!(messages.len(), 1, "only their creation job");
    let ours = read_queue(&jobs(app), 1, Duration::from_secs(1)).await;
    assert!(ours.is_empty(), "no cancel: {:?}", ours.len());
    stack.teardown().await;
}

#[tokio::test]
async fn a_pay_id_whose_creation_failed_or_that_is_canceled_is_not_cancelable() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let failed = accepted_pay_id(app).await;
    let canceled = accepted_pay_id(app).await;
    let store = store(app);
    // A worker stores a failure only while it holds the payId's lock.
    let lock_ttl = std::time::Duration::from_secs(5);
    let locked = store
        .lock_pay_id(&pay(&failed), "worker", lock_ttl)
        .await
        .expect("lock");
    assert!(locked);
    store
        .finish_job(&pay(&failed), "worker", &result("failed", true))
        .await
        .expect("result");
    store
        .finish_job(&pay(&canceled), "no-lock", &result("active", false))
        .await
        .expect("result");
    store
        .apply_renewal(
            &pay(&canceled),
            &update(1, subscription("canceled", 9, false)),
        )
        .await
        .expect("apply");

    for pay_id in [&failed, &canceled] {
        let answer = cancel(app, pay_id, None).await;
        assert_eq!(
            (answer.status, answer.code(), answer.field()),
            (409, "PAY_ID_NOT_CANCELABLE", "payId"),
            "{:?}",
            answer.body
        );
        assert_eq!(answer.body["payId"], pay_id.as_str());
    }
    let messages = read_queue(&jobs(app), 1, Duration::from_secs(1)).await;
    assert!(messages.is_empty(), "no cancel job");
    stack.teardown().await;
}

#[tokio::test]
async fn cancel_and_query_check_their_fields_like_every_call() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let pay_id = accepted_pay_id(app).await;

    let bad_when = cancel(app, &pay_id, Some("tomorrow")).await;
    let mut wrong_type = cancel_request(&pay_id, None);
    wrong_type["tradeType"] = json!("queryAutoRenewalRecord");
    let wrong_type = app.post_signed(CANCEL, wrong_type, SECRET).await;
    let mut wrong_version = query_request(&pay_id);
    wrong_version["version"] = json!("2.0");
    let wrong_version = app.post_signed(QUERY, wrong_version, SECRET).await;
    let unsigned = app
        .post_signed(QUERY, query_request(&pay_id), "not the secret")
        .await;

    assert_eq!(
        (bad_when.status, bad_when.code(), bad_when.field()),
        (400, "PARAM_INVALID", "when")
    );
    assert_eq!(
        (wrong_type.status, wrong_type.code(), wrong_type.field()),
        (400, "PARAM_INVALID", "tradeType")
    );
    assert_eq!(
        (
            wrong_version.status,
            wrong_version.code(),
            wrong_version.field()
        ),
        (400, "PARAM_INVALID", "version")
    );
    assert_eq!((unsigned.status, unsigned.code()), (401, "SIGN_INVALID"));
    stack.teardown().await;
}

#[tokio::test]
async fn a_query_answers_the_flat_fields_and_the_renewal_state() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let pay_id = accepted_pay_id(app).await;

    let processing = app.post_signed(QUERY, query_request(&pay_id), SECRET).await;

    assert_eq!(processing.status, 200, "{:?}", processing.body);
    assert_eq!(processing.body["operateCode"], "S");
    assert_eq!(processing.body["status"], "processing");
    assert_eq!(processing.body["current_period_end"], "");
    assert_eq!(processing.body["cancel_at_period_end"], false);
    assert_eq!(processing.body["renewals"], 0);
    assert_eq!(processing.body["last_renewal_at"], "");
    assert_eq!(processing.body["last_invoice_id"], "");
    assert_eq!(processing.body["last_error"], Value::Null);

    let store = store(app);
    let id = pay(&pay_id);
    store
        .finish_job(&id, "no-lock", &result("active", false))
        .await
        .expect("result");
    // 2026-03-01T00:00:00Z and 2026-02-01T00:00:00Z.
    store
        .apply_renewal(
            &id,
            &update(10, subscription("active", 1_772_323_200, true)),
        )
        .await
        .expect("apply");
    let renewed = RenewalChange::Renewed {
        invoice_id: "in_2".into(),
        paid_at: 1_769_904_000,
    };
    store
        .apply_renewal(&id, &update(9, renewed))
        .await
        .expect("apply");
    let failed = RenewalChange::RenewalFailed {
        error: RenewalError {
            invoice_id: "in_3".into(),
            code: Some("card_declined".into()),
            decline_code: Some("insufficient_funds".into()),
            message: "Your card has insufficient funds.".into(),
        },
    };
    store
        .apply_renewal(&id, &update(11, failed))
        .await
        .expect("apply");

    let answer = app.post_signed(QUERY, query_request(&pay_id), SECRET).await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let body = &answer.body;
    assert_eq!(body["operateCode"], "S");
    assert_eq!(body["status"], "active");
    assert_eq!(body["sub_id"], "sub_1");
    assert_eq!(body["customer_id"], "cus_1");
    assert_eq!(body["current_period_end"], "2026-03-01T00:00:00Z");
    assert_eq!(body["cancel_at_period_end"], true);
    assert_eq!(body["renewals"], 1);
    assert_eq!(body["last_renewal_at"], "2026-02-01T00:00:00Z");
    assert_eq!(body["last_invoice_id"], "in_2");
    assert_eq!(body["last_error"]["decline_code"], "insufficient_funds");
    assert_eq!(body["last_error"]["invoice_id"], "in_3");
    stack.teardown().await;
}

#[tokio::test]
async fn the_renewal_state_never_goes_back_and_counts_each_invoice_once() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let store = store(app);
    let id = pay(&format!("R{}", uuid::Uuid::new_v4().simple()));

    let newer = store
        .apply_renewal(&id, &update(20, subscription("past_due", 200, false)))
        .await
        .expect("apply");
    // Delivered late: an older update of the same part changes nothing.
    let older = store
        .apply_renewal(&id, &update(10, subscription("active", 100, true)))
        .await
        .expect("apply");
    let same = store
        .apply_renewal(&id, &update(20, subscription("active", 100, true)))
        .await
        .expect("apply");
    let renewal = |invoice: &str, at: i64| RenewalChange::Renewed {
        invoice_id: invoice.into(),
        paid_at: at,
    };
    let second = store
        .apply_renewal(&id, &update(30, renewal("in_2", 300)))
        .await
        .expect("apply");
    // The first renewal's event comes after the second's: counted, but not "last".
    let first = store
        .apply_renewal(&id, &update(15, renewal("in_1", 150)))
        .await
        .expect("apply");
    let again = store
        .apply_renewal(&id, &update(30, renewal("in_2", 300)))
        .await
        .expect("apply");
    // A version beyond 2^53 still compares exactly (Lua's numbers would not).
    let big = store
        .apply_renewal(
            &id,
            &update((1 << 60) + 1, subscription("canceled", 400, false)),
        )
        .await
        .expect("apply");
    let below_big = store
        .apply_renewal(&id, &update(1 << 60, subscription("active", 500, false)))
        .await
        .expect("apply");

    assert_eq!(
        newer,
        Applied {
            newer: true,
            counted: false
        }
    );
    assert_eq!(
        older,
        Applied {
            newer: false,
            counted: false
        }
    );
    assert_eq!(
        same,
        Applied {
            newer: false,
            counted: false
        }
    );
    assert_eq!(
        second,
        Applied {
            newer: true,
            counted: true
        }
    );
    assert_eq!(
        first,
        Applied {
            newer: false,
            counted: true
        }
    );
    assert_eq!(
        again,
        Applied {
            newer: false,
            counted: false
        }
    );
    assert!(big.newer);
    assert!(!below_big.newer);
    let state = store.renewal(&id).await.expect("read").expect("a state");
    assert_eq!(state.partner_code, PARTNER);
    assert_eq!(state.status, "canceled");
    assert_eq!(state.current_period_end, Some(400));
    assert!(!state.cancel_at_period_end);
    assert_eq!(state.renewals, 2);
    assert_eq!(state.last_invoice_id, "in_2");
    assert_eq!(state.last_renewal_at, Some(300));
    assert_eq!(state.last_error, None);
    assert_eq!(store.renewal(&pay("never")).await.expect("read"), None);
    stack.teardown().await;
}

#[tokio::test]
async fn an_auto_renewal_stays_known_after_its_intake_record_expired() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let id = pay(&format!("R{}", uuid::Uuid::new_v4().simple()));
    store(app)
        .apply_renewal(&id, &update(1, subscription("active", 100, false)))
        .await
        .expect("apply");

    let mine = app
        .post_signed(QUERY, query_request(id.pay_id().as_str()), SECRET)
        .await;
    let mut theirs = query_request(id.pay_id().as_str());
    theirs["partnerCode"] = json!(OTHER_PARTNER);
    let theirs = app.post_signed(QUERY, theirs, OTHER_SECRET).await;

    assert_eq!(mine.status, 200, "{:?}", mine.body);
    assert_eq!(mine.body["status"], "active");
    assert_eq!(mine.body["sub_id"], "sub_1");
    assert_eq!((theirs.status, theirs.code()), (404, "PAY_ID_UNKNOWN"));
    stack.teardown().await;
}

/// Writes a payId's keys as the version before payIds were scoped by partner did.
async fn write_legacy_keys(app: &TestApp, pay_id: &str) {
    let client = redis::Client::open(crate::helpers::SHARED_REDIS).expect("redis");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    let prefix = app.prefix();
    let result = serde_json::to_string(&result("active", false)).expect("json");
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(format!("{prefix}:intake:{{{pay_id}}}"))
        .arg(&[
            ("fp", "legacy-fingerprint"),
            ("partner", PARTNER),
            ("state", "enqueued"),
            ("accepted_at", "2026-01-01T00:00:00Z"),
        ])
        .ignore()
        .cmd("SET")
        .arg(format!("{prefix}:result:{{{pay_id}}}"))
        .arg(result)
        .arg("EX")
        .arg(86_400)
        .ignore()
        .cmd("HSET")
        .arg(format!("{prefix}:renewal:{{{pay_id}}}"))
        .arg(&[
            ("partner", PARTNER),
            ("sub_id", "sub_1"),
            ("status", "active"),
            ("renewals", "3"),
        ])
        .ignore()
        .query_async(&mut redis)
        .await
        .expect("legacy keys written");
}

fn migrate_keys(app: &TestApp) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_autorenew"))
        .arg("--config")
        .arg(crate::helpers::repo_path("config.toml"))
        .arg("migrate-keys")
        .env("AUTORENEW__REDIS__KEY_PREFIX", app.prefix())
        .output()
        .expect("autorenew migrate-keys runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_pay_id_stored_before_payids_were_scoped_answers_again_after_migrate_keys() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let pay_id = format!("L{}", uuid::Uuid::new_v4().simple());
    write_legacy_keys(app, &pay_id).await;
    let query = || app.post_signed(QUERY, query_request(&pay_id), SECRET);
    assert_eq!(
        query().await.status,
        404,
        "the new version does not read the old names"
    );

    let said = migrate_keys(app);

    assert!(
        said.contains("moved the keys of 1 payIds (3 keys)"),
        "{said}"
    );
    let answer = query().await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "active");
    assert_eq!(answer.body["sub_id"], "sub_1");
    assert_eq!(answer.body["renewals"], 3);
    // Another partner still does not see it, and its cancel is taken as the partner's own.
    let mut theirs = query_request(&pay_id);
    theirs["partnerCode"] = json!(OTHER_PARTNER);
    assert_eq!(
        app.post_signed(QUERY, theirs, OTHER_SECRET).await.status,
        404
    );
    assert_eq!(cancel(app, &pay_id, Some("now")).await.status, 200);
    let store = store(app);
    assert!(store.result(&pay(&pay_id)).await.expect("read").is_some());
    assert!(
        migrate_keys(app).contains("moved the keys of 0 payIds"),
        "a second run moves nothing"
    );
    stack.teardown().await;
}

/// A mark is batched and can arrive after a worker finished the job with a live subscription:
/// it must not give back the record an expiry the finish took away.
#[tokio::test]
async fn a_late_enqueued_mark_leaves_a_live_subscription_s_record_without_expiry() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let pay_id = accepted_pay_id(app).await;
    let store = store(app);
    let key = pay(&pay_id);
    assert!(
        store
            .lock_pay_id(&key, "worker", Duration::from_secs(5))
            .await
            .expect("lock")
    );
    store
        .finish_job(&key, "worker", &result("active", false))
        .await
        .expect("finished");

    store
        .mark_enqueued(&[store.creation_record(&key)])
        .await
        .expect("marked");

    let client = redis::Client::open(crate::helpers::SHARED_REDIS).expect("redis");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}:intake:{{{PARTNER}:{pay_id}}}", app.prefix()))
        .query_async(&mut redis)
        .await
        .expect("PTTL");
    assert_eq!(pttl, -1, "a live subscription's record has no expiry");
    stack.teardown().await;
}
