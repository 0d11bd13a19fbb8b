//! Webhook endpoints and deliveries (docs/design.md#the-simulators-clock-events-and-webhooks): made over the API or at start, each
//! event POSTed to the endpoints that want it, signed as Stripe signs, retried on a non-2xx
//! answer, given up after the configured tries.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use stripe_shared::{Event, EventType};

use stripe_sim::SimSettings;
use stripe_sim::webhooks::{DeliveryPolicy, EndpointSettings, WebhookSettings};

use super::receiver::Receiver;
use crate::helpers::TestStack;
use crate::helpers::sim::TestSim;

const SECRET: &str = "whsec_test_secret_for_the_simulator";

/// A simulator that delivers `events` to `receiver`, signed with [`SECRET`], retrying
/// quickly: the settings `autorenew run` fills in for its own intake.
async fn delivering_to(receiver: &Receiver, events: &[&str], attempts: u32) -> TestStack {
    TestStack::builder()
        .simulator_settings(SimSettings {
            webhooks: WebhookSettings {
                endpoints: vec![EndpointSettings {
                    url: receiver.url.clone(),
                    secret: SecretString::from(SECRET),
                    enabled_events: events.iter().map(|e| (*e).to_owned()).collect(),
                }],
                delivery: DeliveryPolicy {
                    attempts,
                    first_retry: Duration::from_millis(20),
                    ..DeliveryPolicy::default()
                },
            },
            ..SimSettings::laptop()
        })
        .start()
        .await
}

async fn subscribe(sim: &TestSim) -> String {
    let (customer, pm) = sim
        .customer_with_card("hook@example.com", "pm_card_visa")
        .await;
    let price = sim.price(1999, None).await;
    let form = format!("customer={customer}&items[0][price]={price}&default_payment_method={pm}");
    let created = sim.post("/v1/subscriptions", &form, None).await;
    assert_eq!(created.status, 200, "{}", created.body);
    created.body["id"].as_str().expect("an id").to_owned()
}

#[tokio::test]
async fn an_endpoint_made_over_the_api_gets_each_event_signed_with_the_secret_it_was_given() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let receiver = Receiver::start().await;
    let endpoint = sim
        .post(
            "/v1/webhook_endpoints",
            &format!("url={}&enabled_events[]=*", receiver.url),
            None,
        )
        .await;
    assert_eq!(endpoint.status, 200, "{}", endpoint.body);
    let secret = endpoint.body["secret"]
        .as_str()
        .expect("the secret")
        .to_owned();

    let subscription = subscribe(sim).await;
    let got = receiver
        .wait_for_kinds(&["customer.subscription.created", "invoice.paid"])
        .await;
    let shown = sim
        .get(&format!(
            "/v1/webhook_endpoints/{}",
            endpoint.body["id"].as_str().expect("an id")
        ))
        .await;

    assert!(secret.starts_with("whsec_"));
    assert_eq!(endpoint.body["object"], "webhook_endpoint");
    assert_eq!(endpoint.body["url"], receiver.url.as_str());
    assert_eq!(shown.body.get("secret"), None, "shown at creation only");
    for delivery in &got {
        assert!(delivery.signed_with(&secret), "{}", delivery.signature);
        assert!(!delivery.signed_with("whsec_another"));
        let event: Event =
            miniserde::json::from_str(std::str::from_utf8(&delivery.body).expect("UTF-8"))
                .expect("async-stripe reads the Event");
        assert!(event.id.as_str().starts_with("evt_"));
        assert!(!event.livemode);
    }
    let created = got
        .iter()
        .find(|d| d.kind() == "customer.subscription.created")
        .expect("delivered");
    let event: Event =
        miniserde::json::from_str(std::str::from_utf8(&created.body).expect("UTF-8"))
            .expect("an Event");
    assert_eq!(event.type_, EventType::CustomerSubscriptionCreated);
    assert_eq!(
        created.json()["data"]["object"]["id"],
        subscription.as_str()
    );
    let listed = sim.get(&format!("/v1/events/{}", event.id.as_str())).await;
    assert_eq!(listed.body["type"], "customer.subscription.created");
}

#[tokio::test]
async fn only_the_enabled_event_types_are_delivered() {
    let receiver = Receiver::start().await;
    let stack = delivering_to(&receiver, &["invoice.paid"], 3).await;
    let sim = stack.sim();

    subscribe(sim).await;
    let got = receiver.wait_for_kinds(&["invoice.paid"]).await;
    let stats = sim
        .wait_for_stats(|s| s["webhooks"]["delivered"] == 1)
        .await;

    assert_eq!(got.len(), 1);
    assert!(got[0].signed_with(SECRET));
    assert_eq!(got[0].json()["pending_webhooks"], 1);
    assert_eq!(stats["webhooks"]["attempts"], 1, "nothing else was sent");
    let created = sim.events_of("customer.subscription.created").await;
    assert_eq!(created[0]["pending_webhooks"], 0, "no endpoint wanted it");
}

#[tokio::test]
async fn a_delivery_answered_5xx_is_retried_with_the_same_body_until_it_is_taken() {
    let receiver = Receiver::start().await;
    receiver.answer(&[500, 503]);
    let stack = delivering_to(&receiver, &["customer.created"], 5).await;
    let sim = stack.sim();

    sim.post("/v1/customers", "email=retry@example.com", None)
        .await;
    let got = receiver.wait_for(|got| got.len() == 3).await;
    let stats = sim
        .wait_for_stats(|s| s["webhooks"]["delivered"] == 1)
        .await;

    assert!(got.iter().all(|d| d.body == got[0].body), "the same event");
    assert!(got.iter().all(|d| d.signed_with(SECRET)));
    assert_eq!(stats["webhooks"]["failed_attempts"], 2);
    let id = got[0].json()["id"].as_str().expect("an id").to_owned();
    let event = sim.get(&format!("/v1/events/{id}")).await;
    assert_eq!(event.body["pending_webhooks"], 0, "taken at last");
}

#[tokio::test]
async fn a_delivery_never_taken_is_given_up_after_the_configured_tries() {
    let receiver = Receiver::start().await;
    receiver.answer(&[500; 10]);
    let stack = delivering_to(&receiver, &["customer.created"], 3).await;
    let sim = stack.sim();

    sim.post("/v1/customers", "email=down@example.com", None)
        .await;
    let stats = sim.wait_for_stats(|s| s["webhooks"]["given_up"] == 1).await;

    assert_eq!(stats["webhooks"]["attempts"], 3);
    assert_eq!(receiver.received().len(), 3);
    let events = sim.events_of("customer.created").await;
    assert_eq!(events[0]["pending_webhooks"], 1, "never taken");
}

#[tokio::test]
async fn a_renewal_is_delivered_when_the_clock_is_advanced() {
    let receiver = Receiver::start().await;
    let stack = delivering_to(&receiver, &["invoice.paid"], 3).await;
    let sim = stack.sim();
    let subscription = subscribe(sim).await;
    receiver.wait_for_kinds(&["invoice.paid"]).await;

    sim.advance(31 * 86_400).await;
    let got = receiver.wait_for(|got| got.len() == 2).await;

    let renewal: Value = got
        .iter()
        .map(|d| d.json())
        .find(|e| e["data"]["object"]["billing_reason"] == "subscription_cycle")
        .expect("the renewal's invoice.paid");
    assert_eq!(
        renewal["data"]["object"]["parent"]["subscription_details"]["subscription"],
        subscription.as_str()
    );
    assert_eq!(
        renewal["request"]["id"],
        Value::Null,
        "the clock, not a request"
    );
}

#[tokio::test]
async fn an_endpoint_the_simulator_cannot_reach_is_refused() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();

    let https = sim
        .post(
            "/v1/webhook_endpoints",
            "url=https://example.com/hook&enabled_events[]=*",
            None,
        )
        .await;
    let no_events = sim
        .post("/v1/webhook_endpoints", "url=http://127.0.0.1:9/hook", None)
        .await;

    assert_eq!(https.status, 400);
    assert_eq!(https.error_field("param"), Some("url"));
    assert_eq!(no_events.status, 400);
    assert_eq!(no_events.error_field("param"), Some("enabled_events"));
}

/// An endpoint that takes `delay` to answer each delivery, and records it only then.
async fn slow_endpoint(delay: Duration) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::sync::{Arc, Mutex};
    let taken = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    let inbox = Arc::clone(&taken);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let inbox = Arc::clone(&inbox);
            async move {
                tokio::time::sleep(delay).await;
                let event: Value = serde_json::from_slice(&body).expect("JSON");
                inbox.lock().expect("inbox").push(event);
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, taken)
}

#[tokio::test]
async fn an_advance_answers_once_its_webhooks_are_taken() {
    let (url, taken) = slow_endpoint(Duration::from_millis(300)).await;
    let stack = TestStack::builder()
        .simulator_settings(SimSettings {
            webhooks: WebhookSettings {
                endpoints: vec![EndpointSettings {
                    url,
                    secret: SecretString::from(SECRET),
                    enabled_events: vec!["invoice.paid".into()],
                }],
                delivery: DeliveryPolicy::default(),
            },
            ..SimSettings::laptop()
        })
        .start()
        .await;
    let sim = stack.sim();
    let subscription = subscribe(sim).await;
    // The creation's own invoice.paid, delivered in the background, is not the advance's.
    let creation_delivered = tokio::time::timeout(Duration::from_secs(5), async {
        while taken.lock().expect("inbox").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(creation_delivered.is_ok(), "the creation's invoice.paid");

    let report = sim.advance(31 * 86_400).await;
    let renewals_taken = taken
        .lock()
        .expect("inbox")
        .iter()
        .filter(|e| e["data"]["object"]["billing_reason"] == "subscription_cycle")
        .count();

    assert_eq!(report["renewals"], 1, "{report}");
    assert_eq!(report["webhooks"]["sent"], 1, "{report}");
    assert_eq!(report["webhooks"]["delivered"], 1, "{report}");
    assert_eq!(report["webhooks"]["pending"], 0, "{report}");
    assert_eq!(
        renewals_taken, 1,
        "the renewal's invoice.paid of {subscription} was taken before the advance answered"
    );
}
