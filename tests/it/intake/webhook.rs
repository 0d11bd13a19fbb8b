//! `POST /stripe/webhook` (docs/partners.md#stripes-webhooks) against the real RabbitMQ and Redis: Stripe-signed
//! events in, each event once on the jobs queue, and nothing in for a bad signature.

use std::time::Duration;

use autorenew::domain::webhook::STRIPE_EVENT_MESSAGE_TYPE;
use lapin::types::AMQPValue;
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::{Answer, SHARED_REDIS, TestApp, TestStack, read_queue};

const SECRET: &str = "whsec_test_secret";
const ROLLED: &str = "whsec_rolled_secret";

/// An `invoice.paid` event in the shape of Stripe's documented example event, with a fresh id.
fn stripe_event() -> (String, String) {
    let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
    let body = format!(
        r#"{{"id":"{id}","object":"event","api_version":"2025-03-31.basil","created":{created},"data":{{"object":{{"id":"in_1NG8Dt2eZvKYlo2Cq5sC2gq8","object":"invoice","amount_paid":1999,"billing_reason":"subscription_cycle","currency":"usd","customer":"cus_NffrFeUfNV2Hib","status":"paid"}}}},"livemode":false,"pending_webhooks":1,"request":{{"id":null,"idempotency_key":null}},"type":"invoice.paid"}}"#,
        created = now() - 2,
    );
    (id, body)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The header Stripe sends, computed here from the scheme (not with the code under test).
fn signature(body: &str, secret: &str, t: i64) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A stack of an intake that takes Stripe's webhooks signed with one of `secrets`.
async fn app_with(secrets: &[&str]) -> TestStack {
    TestStack::builder()
        .settings(|settings| {
            settings.stripe.webhook_secrets =
                secrets.iter().map(|s| SecretString::from(*s)).collect();
        })
        .intake()
        .start()
        .await
}

async fn deliver(app: &TestApp, body: &str, header: Option<&str>) -> Answer {
    let mut request = app
        .client
        .post(format!("{}/stripe/webhook", app.address))
        .header("content-type", "application/json; charset=utf-8")
        .body(body.to_owned());
    if let Some(header) = header {
        request = request.header("stripe-signature", header);
    }
    Answer::from(request.send().await.expect("POST")).await
}

/// A connection to the shared Redis, and the key the intake keeps event `id` under.
async fn event_key(app: &TestApp, id: &str) -> (redis::aio::MultiplexedConnection, String) {
    let redis = redis::Client::open(SHARED_REDIS)
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let key = format!("{}:stripe-event:{{{id}}}", app.settings.redis.key_prefix);
    (redis, key)
}

fn jobs(app: &TestApp) -> String {
    format!("{}.jobs", app.prefix())
}

#[tokio::test]
async fn a_signed_event_lands_on_the_jobs_queue_once_as_a_persistent_stripe_event() {
    let stack = app_with(&[SECRET]).await;
    let app = stack.intake();
    let (id, body) = stripe_event();

    let answer = deliver(app, &body, Some(&signature(&body, SECRET, now()))).await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["operateCode"], "S");
    let messages = read_queue(&jobs(app), 2, Duration::from_secs(3)).await;
    assert_eq!(messages.len(), 1, "one message");
    let message = &messages[0];
    assert_eq!(message.properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        message.properties.kind().as_ref().map(|s| s.as_str()),
        Some(STRIPE_EVENT_MESSAGE_TYPE)
    );
    assert_eq!(
        message.properties.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    // The body is Stripe's, byte for byte.
    assert_eq!(
        message.body,
        serde_json::from_str::<Value>(&body).expect("JSON")
    );
    let headers = message.properties.headers().as_ref().expect("headers");
    assert_eq!(
        headers.inner().get("stripe_event_type"),
        Some(&AMQPValue::LongString("invoice.paid".into()))
    );
    stack.teardown().await;
}

#[tokio::test]
async fn a_second_delivery_of_an_event_answers_200_and_enqueues_nothing_more() {
    let stack = app_with(&[SECRET]).await;
    let app = stack.intake();
    let (_, body) = stripe_event();

    let first = deliver(app, &body, Some(&signature(&body, SECRET, now()))).await;
    // Stripe's retry: the same event, signed again later.
    let second = deliver(app, &body, Some(&signature(&body, SECRET, now() + 1))).await;
    // And many at once.
    let concurrent = futures_util::future::join_all((0..10).map(|_| async {
        let header = signature(&body, SECRET, now());
        deliver(app, &body, Some(&header)).await
    }))
    .await;

    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200, "{:?}", second.body);
    for answer in &concurrent {
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    let messages = read_queue(&jobs(app), 3, Duration::from_secs(2)).await;
    assert_eq!(messages.len(), 1, "one message for one event id");
    stack.teardown().await;
}

#[tokio::test]
async fn concurrent_first_deliveries_of_one_event_make_one_message() {
    let stack = app_with(&[SECRET]).await;
    let app = stack.intake();
    let (_, body) = stripe_event();

    let answers = futures_util::future::join_all((0..20).map(|_| async {
        let header = signature(&body, SECRET, now());
        deliver(app, &body, Some(&header)).await
    }))
    .await;

    for answer in &answers {
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    let messages = read_queue(&jobs(app), 3, Duration::from_secs(2)).await;
    assert_eq!(messages.len(), 1, "one message for one event id");
    stack.teardown().await;
}

#[tokio::test]
async fn bad_signatures_are_refused_and_enqueue_nothing() {
    let stack = app_with(&[SECRET]).await;
    let app = stack.intake();
    let (_, body) = stripe_event();
    let other_body = body.replace("1999", "1");
    let cases = [
        ("no header", None),
        (
            "another secret",
            Some(signature(&body, "whsec_nope", now())),
        ),
        (
            "signed for another body",
            Some(signature(&other_body, SECRET, now())),
        ),
        (
            "an old timestamp",
            Some(signature(&body, SECRET, now() - 301)),
        ),
        (
            "a timestamp from the future",
            Some(signature(&body, SECRET, now() + 301)),
        ),
        ("only a v0 scheme", Some(format!("t={},v0=abc", now()))),
        ("garbage", Some("not a signature".to_owned())),
    ];

    for (name, header) in cases {
        let answer = deliver(app, &body, header.as_deref()).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "WEBHOOK_SIGNATURE_INVALID"),
            "{name}: {:?}",
            answer.body
        );
        assert_eq!(answer.body["operateCode"], "F", "{name}");
    }
    let messages = read_queue(&jobs(app), 1, Duration::from_secs(1)).await;
    assert!(messages.is_empty(), "nothing enqueued");
    stack.teardown().await;
}

#[tokio::test]
async fn during_a_secret_roll_either_secret_verifies() {
    let stack = app_with(&[SECRET, ROLLED]).await;
    let app = stack.intake();
    let (_, old) = stripe_event();
    let (_, new) = stripe_event();

    let by_old = deliver(app, &old, Some(&signature(&old, SECRET, now()))).await;
    let by_new = deliver(app, &new, Some(&signature(&new, ROLLED, now()))).await;

    assert_eq!(by_old.status, 200, "{:?}", by_old.body);
    assert_eq!(by_new.status, 200, "{:?}", by_new.body);
    let messages = read_queue(&jobs(app), 3, Duration::from_secs(2)).await;
    assert_eq!(messages.len(), 2);
    stack.teardown().await;
}

#[tokio::test]
async fn without_a_configured_secret_the_route_is_404() {
    let stack = app_with(&[]).await;
    let app = stack.intake();
    let (_, body) = stripe_event();

    let answer = deliver(app, &body, Some(&signature(&body, SECRET, now()))).await;

    assert_eq!((answer.status, answer.code()), (404, "NOT_FOUND"));
    let messages = read_queue(&jobs(app), 1, Duration::from_secs(1)).await;
    assert!(messages.is_empty());
    stack.teardown().await;
}

#[tokio::test]
async fn a_signed_body_that_is_not_a_stripe_event_is_400() {
    let stack = app_with(&[SECRET]).await;
    let app = stack.intake();
    let body = r#"{"id":"evt_1","type":"invoice.paid"}"#;

    let answer = deliver(app, body, Some(&signature(body, SECRET, now()))).await;

    assert_eq!((answer.status, answer.code()), (400, "BODY_INVALID"));
    stack.teardown().await;
}

#[tokio::test]
async fn an_event_the_broker_did_not_take_is_503_and_free_for_stripes_retry() {
    let stack = app_with(&[SECRET]).await;
    let app = stack.intake();
    let (id, body) = stripe_event();
    // No queue behind the jobs exchange: the broker returns the message (unroutable).
    let connection = crate::helpers::shared_amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_delete(jobs(app).as_str().into(), Default::default())
        .await
        .expect("delete the jobs queue");

    let refused = deliver(app, &body, Some(&signature(&body, SECRET, now()))).await;
    let retried = deliver(app, &body, Some(&signature(&body, SECRET, now()))).await;

    assert_eq!(
        (refused.status, refused.code()),
        (503, "BROKER_UNAVAILABLE"),
        "{:?}",
        refused.body
    );
    assert_eq!(retried.status, 503, "a retry is not taken for a repeat");
    let (mut redis, key) = event_key(app, &id).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("EXISTS");
    assert!(!exists, "an event not on the broker is not marked");

    // The queue is back: Stripe's next retry is taken.
    channel
        .queue_declare(
            jobs(app).as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("declare");
    channel
        .queue_bind(
            jobs(app).as_str().into(),
            jobs(app).as_str().into(),
            autorenew::broker::JOB_ROUTING_KEY.into(),
            Default::default(),
            Default::default(),
        )
        .await
        .expect("bind");
    let taken = deliver(app, &body, Some(&signature(&body, SECRET, now()))).await;
    assert_eq!(taken.status, 200, "{:?}", taken.body);
    let messages = read_queue(&jobs(app), 2, Duration::from_secs(2)).await;
    assert_eq!(messages.len(), 1);
    let _ = connection.close(200, "done".into()).await;
    stack.teardown().await;
}

#[tokio::test]
async fn metrics_count_webhook_events_by_type_and_outcome() {
    let stack = app_with(&[SECRET]).await;
    let app = stack.intake();
    let (_, body) = stripe_event();
    let header = signature(&body, SECRET, now());
    deliver(app, &body, Some(&header)).await;
    deliver(app, &body, Some(&header)).await;
    deliver(app, &body, None).await;

    let text = app.get("/metrics").await.text().await.expect("metrics");

    for series in [
        r#"autorenew_webhook_events_total{type="invoice.paid",outcome="enqueued"}"#,
        r#"autorenew_webhook_events_total{type="invoice.paid",outcome="duplicate"}"#,
        r#"autorenew_webhook_events_total{type="unknown",outcome="signature_invalid"}"#,
    ] {
        assert!(text.contains(series), "{series} missing: {text}");
    }
    stack.teardown().await;
}

#[tokio::test]
async fn an_event_taken_before_event_records_were_hashes_is_still_a_repeat() {
    let stack = app_with(&[SECRET]).await;
    let app = stack.intake();
    let (id, body) = stripe_event();
    // What an intake of the version before wrote for an event it had put on the broker.
    let (mut redis, key) = event_key(app, &id).await;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("taken")
        .arg("EX")
        .arg(600)
        .query_async(&mut redis)
        .await
        .expect("SET");

    let answer = deliver(app, &body, Some(&signature(&body, SECRET, now()))).await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        answer.body["message"], "event taken before",
        "{:?}",
        answer.body
    );
    let messages = read_queue(&jobs(app), 1, Duration::from_millis(500)).await;
    assert!(messages.is_empty(), "a repeat enqueues nothing");
    stack.teardown().await;
}

/// Writes the claim a delivery makes before it publishes, as if its holder were still at it
/// (or had died) `age_ms` ago.
async fn claim_event(app: &TestApp, id: &str, age_ms: u64) {
    let (mut redis, key) = event_key(app, id).await;
    let claimed_at = crate::helpers::now_millis() - age_ms;
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("state")
        .arg("pending")
        .arg("claim")
        .arg("another-delivery")
        .arg("claimed_at")
        .arg(claimed_at)
        .query_async(&mut redis)
        .await
        .expect("HSET");
}

#[tokio::test]
async fn a_delivery_takes_over_an_event_claim_whose_holder_died() {
    let stack = app_with(&[SECRET]).await;
    let app = stack.intake();
    let (id, body) = stripe_event();
    // Far older than the claim's lease (twice the publish timeout): its holder is gone.
    claim_event(app, &id, 60_000).await;

    let answer = deliver(app, &body, Some(&signature(&body, SECRET, now()))).await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["message"], "event taken", "{:?}", answer.body);
    let messages = read_queue(&jobs(app), 2, Duration::from_secs(2)).await;
    assert_eq!(
        messages.len(),
        1,
        "the event is published once, by the taker"
    );
    stack.teardown().await;
}

#[tokio::test]
async fn a_delivery_of_an_event_another_delivery_is_publishing_waits_then_answers_503() {
    let stack = app_with(&[SECRET]).await;
    let app = stack.intake();
    let (id, body) = stripe_event();
    // Claimed just now by a delivery that never finishes within this one's publish timeout.
    claim_event(app, &id, 0).await;

    let answer = deliver(app, &body, Some(&signature(&body, SECRET, now()))).await;

    assert_eq!(
        (answer.status, answer.code()),
        (503, "WEBHOOK_EVENT_BUSY"),
        "{:?}",
        answer.body
    );
    let messages = read_queue(&jobs(app), 1, Duration::from_millis(500)).await;
    assert!(
        messages.is_empty(),
        "the holder publishes, not this delivery"
    );
    stack.teardown().await;
}
