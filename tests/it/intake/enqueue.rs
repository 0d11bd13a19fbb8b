//! A valid request becomes exactly one persistent job on the jobs queue.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{OTHER_PARTNER, OTHER_SECRET, PARTNER, SECRET, TestStack, valid_request};

#[tokio::test]
async fn a_valid_request_lands_on_the_jobs_queue_as_a_persistent_job() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let mut request = valid_request();
    request["memo"] = json!("kept with the job");
    let pay_id = request["payId"].as_str().expect("payId").to_owned();

    let answer = app.subscribe(request).await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["operateCode"], "S");
    assert_eq!(answer.body["status"], "processing");
    assert_eq!(answer.body["payId"], pay_id.as_str());
    for field in ["customer_id", "pay_method", "product_id", "sub_id"] {
        assert_eq!(answer.body[field], "", "{field}");
    }
    let jobs = app.jobs_queued(2, Duration::from_secs(3)).await;
    assert_eq!(jobs.len(), 1, "exactly one job");
    let job = &jobs[0];
    assert_eq!(job.properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        job.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        job.properties.message_id().as_ref().map(|s| s.as_str()),
        Some(format!("{PARTNER}:{pay_id}").as_str()),
        "the payId in its partner's namespace"
    );
    assert_eq!(job.body["payId"], pay_id.as_str());
    assert_eq!(job.body["partnerCode"], PARTNER);
    assert_eq!(job.body["amountMinor"], 1999);
    assert_eq!(job.body["payCurrency"], "usd");
    assert_eq!(job.body["pm_id"], "pm_1GnMUDLnVNBddzslXw7xuoe6");
    assert_eq!(job.body["extras"]["memo"], "kept with the job");
    stack.teardown().await;
}

#[tokio::test]
async fn the_same_request_again_answers_the_same_and_enqueues_nothing_more() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let request = valid_request();

    let first = app.subscribe(request.clone()).await;
    // A partner's retry: a fresh tradeTime and a new sign, the same content.
    let mut retry = request.clone();
    retry["tradeTime"] = json!((crate::helpers::now_millis() + 5).to_string());
    let second = app.subscribe(retry).await;

    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    assert_eq!(first.body, second.body);
    let jobs = app.jobs_queued(2, Duration::from_secs(2)).await;
    assert_eq!(jobs.len(), 1, "one job for one payId");
    stack.teardown().await;
}

#[tokio::test]
async fn concurrent_copies_of_one_request_make_one_job() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let request = valid_request();

    let answers =
        futures_util::future::join_all((0..20).map(|_| app.subscribe(request.clone()))).await;

    for answer in &answers {
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.body["operateCode"], "S");
    }
    let jobs = app.jobs_queued(3, Duration::from_secs(2)).await;
    assert_eq!(jobs.len(), 1, "one job for one payId");
    stack.teardown().await;
}

#[tokio::test]
async fn the_same_pay_id_with_other_content_is_a_conflict() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let request = valid_request();
    assert_eq!(app.subscribe(request.clone()).await.status, 200);

    for (field, value) in [
        ("payAmount", "29.99"),
        ("email", "other@example.com"),
        ("plan_id", "OTHER"),
    ] {
        let mut changed = request.clone();
        changed[field] = json!(value);
        let answer = app.subscribe(changed).await;
        assert_eq!(
            (answer.status, answer.code()),
            (409, "PAY_ID_CONFLICT"),
            "{field}"
        );
        assert_eq!(answer.field(), "payId");
    }
    // Another partner's request for the same payId is no conflict: a payId belongs to its
    // partner, and the other partner never learns that this one used it.
    let mut other = request.clone();
    other["partnerCode"] = json!(OTHER_PARTNER);
    let answer = app
        .post_signed("/stripeSubDirectly", other, OTHER_SECRET)
        .await;
    assert_eq!(
        (answer.status, answer.body["status"].as_str()),
        (200, Some("processing"))
    );
    stack.teardown().await;
}

#[tokio::test]
async fn result_query_shows_a_partner_only_its_own_pay_ids() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let request = valid_request();
    let pay_id = request["payId"].clone();
    assert_eq!(app.subscribe(request).await.status, 200);
    let query = |partner: &str| json!({"partnerCode": partner, "payId": pay_id, "tradeType": "resultQuery", "version": "3.0"});

    let own = app
        .post_signed("/resultQuery", query(PARTNER), SECRET)
        .await;
    let other = app
        .post_signed("/resultQuery", query(OTHER_PARTNER), OTHER_SECRET)
        .await;
    let mut unknown_query = query(PARTNER);
    unknown_query["payId"] = json!("never-sent");
    let unknown = app.post_signed("/resultQuery", unknown_query, SECRET).await;

    assert_eq!(own.status, 200, "{:?}", own.body);
    assert_eq!(own.body["status"], "processing");
    assert_eq!((other.status, other.code()), (404, "PAY_ID_UNKNOWN"));
    assert_eq!((unknown.status, unknown.code()), (404, "PAY_ID_UNKNOWN"));
    stack.teardown().await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_code() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    app.subscribe(valid_request()).await;
    let mut bad = valid_request();
    bad["version"] = json!("1.0");
    app.subscribe(bad).await;

    let text = app.get("/metrics").await.text().await.expect("metrics");

    assert!(
        text.contains(
            r#"autorenew_intake_requests_total{route="/stripeSubDirectly",status="200",code="S"}"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"code="PARAM_INVALID""#), "{text}");
    assert!(
        text.contains("autorenew_intake_enqueue_duration_seconds_bucket"),
        "{text}"
    );
    stack.teardown().await;
}

#[tokio::test]
async fn an_f_answer_is_counted_under_its_code_and_a_bad_sign_under_its_partner() {
    use autorenew::domain::{FailureCode, FailureDetail, FinalResult, PartnerCode, PayId, PayKey};
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let request = valid_request();
    let pay_id = request["payId"].as_str().expect("payId").to_owned();
    assert_eq!(app.subscribe(request.clone()).await.status, 200);
    // The job ends declined, as a worker stores it (under the payId's lock).
    let store = autorenew::store::Store::new(&app.settings.redis).expect("store");
    let key = PayKey::new(
        PartnerCode::parse(PARTNER).expect("partner"),
        PayId::parse(&pay_id).expect("payId"),
    );
    let lock = std::time::Duration::from_secs(5);
    assert!(store.lock_pay_id(&key, "worker", lock).await.expect("lock"));
    let declined = FinalResult {
        status: "failed".into(),
        customer_id: String::new(),
        sub_id: String::new(),
        product_id: String::new(),
        pay_method: String::new(),
        error: Some(FailureDetail {
            code: FailureCode::CardDeclined,
            message: "Your card was declined.".into(),
            stripe_code: Some("card_declined".into()),
            decline_code: Some("generic_decline".into()),
        }),
        attempts: 1,
        accepted_at: "2026-01-01T00:00:00Z".into(),
        completed_at: "2026-01-01T00:00:01Z".into(),
    };
    store
        .finish_job(&key, "worker", &declined)
        .await
        .expect("stored");

    let again = app.subscribe(request).await;
    assert_eq!((again.status, again.code()), (200, "CARD_DECLINED"));
    let mut forged = valid_request();
    forged["partnerCode"] = json!(OTHER_PARTNER);
    let refused = app.post_signed("/stripeSubDirectly", forged, SECRET).await;
    assert_eq!(refused.code(), "SIGN_INVALID");

    let text = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        text.contains(
            r#"autorenew_intake_requests_total{route="/stripeSubDirectly",status="200",code="CARD_DECLINED"}"#
        ),
        "an F answer is counted under its code, not S: {text}"
    );
    assert!(
        text.contains(&format!(
            r#"autorenew_intake_sign_invalid_total{{partner="{OTHER_PARTNER}"}}"#
        )),
        "{text}"
    );
    stack.teardown().await;
}

#[tokio::test]
async fn a_retry_takes_over_a_claim_whose_holder_died_and_publishes_the_first_requests_job() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let request = crate::helpers::signed(valid_request(), SECRET);
    let bytes = serde_json::to_vec(&request).expect("JSON");
    let (parsed, fields) =
        autorenew::domain::SubscriptionRequest::parse(&bytes).expect("a valid request");
    let first_job = autorenew::domain::Job::new(
        &parsed,
        Default::default(),
        "2026-01-01T00:00:00Z".into(),
        "the-first-request".into(),
    )
    .encode();
    // What a first request left behind when it died between Redis and the broker, a minute
    // ago: far past its claim's lease (twice the publish timeout).
    let key = format!(
        "{}:intake:{{{PARTNER}:{}}}",
        app.settings.redis.key_prefix, parsed.pay_id
    );
    let mut redis = redis::Client::open(crate::helpers::SHARED_REDIS)
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("fp")
        .arg(fields.fingerprint())
        .arg("partner")
        .arg(PARTNER)
        .arg("state")
        .arg("pending")
        .arg("claim")
        .arg("the-first-request")
        .arg("claimed_at")
        .arg(crate::helpers::now_millis() - 60_000)
        .arg("accepted_at")
        .arg("2026-01-01T00:00:00Z")
        .arg("job")
        .arg(&first_job)
        .query_async(&mut redis)
        .await
        .expect("HSET");

    let answer = app.subscribe(request).await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "processing", "{:?}", answer.body);
    let jobs = app.jobs_queued(2, Duration::from_secs(3)).await;
    assert_eq!(jobs.len(), 1, "exactly one job");
    assert_eq!(
        jobs[0].body["requestId"], "the-first-request",
        "the job stored by the first request, not the retry's own"
    );
    stack.teardown().await;
}
