//! Partners served in turn (docs/design.md, "Partners served in turn"): each partner's jobs
//! wait in a lane of their own, a delayed copy comes back to its lane, what has no lane falls
//! through to the shared queue, and Stripe's rate is shared between partners by weight. On the
//! shared RabbitMQ and Redis, under a test prefix.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use autorenew::broker::{Broker, Destination, JobMessage, Topology};
use autorenew::budget::SharedBudget;
use autorenew::config::PartnerSettings;
use autorenew::store::Store;
use autorenew::stripe::Budget;
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    SHARED_AMQP, SHARED_REDIS, TestStack, delete_keys, delete_topology, read_queue, test_settings,
};

const A: &str = "PLANE_A";
const B: &str = "PLANE_B";

/// A broker on a fresh prefix with lanes for A and B, its delay queues short.
async fn broker() -> (Broker, CancellationToken) {
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let topology = Topology::new(
        &prefix,
        vec![Duration::from_millis(300)],
        Duration::from_millis(300),
        Duration::from_millis(300),
    )
    .with_partners([A.to_owned(), B.to_owned()]);
    let stop = CancellationToken::new();
    let broker = Broker::start(SecretString::from(SHARED_AMQP), topology, stop.clone());
    assert!(
        broker.wait_ready(Duration::from_secs(15)).await,
        "the broker connects and declares the lanes"
    );
    (broker, stop)
}

async fn publish(broker: &Broker, pay_id: &str, partner: Option<&str>, to: Destination<'_>) {
    let body = serde_json::to_vec(&json!({ "payId": pay_id })).expect("JSON");
    let message = JobMessage {
        kind: "autorenew.job",
        body: &body,
        message_id: pay_id,
        attempt: 1,
        parked: false,
        partner,
    };
    broker
        .publish_job(message, to, Duration::from_secs(5))
        .await
        .expect("a confirmed publish");
}

async fn pay_ids_in(queue: &str, count: usize) -> Vec<String> {
    let mut found: Vec<String> = read_queue(queue, count, Duration::from_secs(5))
        .await
        .into_iter()
        .map(|m| m.body["payId"].as_str().unwrap_or_default().to_owned())
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn each_partners_jobs_wait_in_its_own_lane_and_a_job_of_no_lane_in_the_shared_queue() {
    let (broker, stop) = broker().await;
    let topology = broker.topology().clone();

    publish(&broker, "a-1", Some(A), Destination::Jobs).await;
    publish(&broker, "b-1", Some(B), Destination::Jobs).await;
    publish(&broker, "a-2", Some(A), Destination::Jobs).await;
    // A Stripe event has no partner; a partner the configuration does not know has no lane.
    publish(&broker, "event-1", None, Destination::Jobs).await;
    publish(&broker, "stranger-1", Some("PSTRANGER"), Destination::Jobs).await;

    assert_eq!(pay_ids_in(&topology.lane(A), 3).await, ["a-1", "a-2"]);
    assert_eq!(pay_ids_in(&topology.lane(B), 2).await, ["b-1"]);
    assert_eq!(
        pay_ids_in(&topology.jobs(), 3).await,
        ["event-1", "stranger-1"],
        "what has no lane is worked from the shared queue, never refused or lost"
    );

    stop.cancel();
    delete_topology(&topology).await;
}

#[tokio::test]
async fn a_delayed_copy_comes_back_to_its_partners_lane() {
    let (broker, stop) = broker().await;
    let topology = broker.topology().clone();

    let retry = topology.retry_queue(Duration::from_millis(300));
    publish(&broker, "b-retry", Some(B), Destination::Queue(&retry)).await;
    let locked = topology.lock_retry_queue();
    publish(&broker, "a-locked", Some(A), Destination::Queue(&locked)).await;
    publish(&broker, "event-retry", None, Destination::Queue(&retry)).await;

    assert_eq!(pay_ids_in(&topology.lane(B), 1).await, ["b-retry"]);
    assert_eq!(pay_ids_in(&topology.lane(A), 1).await, ["a-locked"]);
    assert_eq!(pay_ids_in(&topology.jobs(), 1).await, ["event-retry"]);
    let back = read_queue(&topology.lane(B), 1, Duration::from_millis(500)).await;
    assert!(back.is_empty(), "each copy came back once");

    stop.cancel();
    delete_topology(&topology).await;
}

/// A partner's callers in one process: the partner, its weight, how many tasks ask for it.
type Callers = (&'static str, u32, usize);

/// Takes from a budget of `per_second` until `total` calls went, through one budget per
/// process given (each standing for a worker process), with the callers listed for it (each
/// asking again as soon as it got one, so every partner always waits); returns the calls each
/// partner got.
async fn share_out(
    per_second: u32,
    total: usize,
    processes: &[&[Callers]],
) -> HashMap<&'static str, usize> {
    let mut settings = test_settings(SHARED_AMQP, SHARED_REDIS);
    settings.stripe.max_requests_per_second = per_second;
    for &(partner, weight, _) in processes.iter().copied().flatten() {
        if settings.partners.iter().all(|p| p.code != partner) {
            let mut configured = PartnerSettings::new(partner, "a-secret");
            configured.weight = weight;
            settings.partners.push(configured);
        }
    }
    let prefix = settings.redis.key_prefix.clone();
    let store = Store::new(&settings.redis).expect("a store");
    let taken = Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for &partners in processes {
        let budget = Arc::new(SharedBudget::new(
            &settings,
            store.clone(),
            CancellationToken::new(),
        ));
        for &(partner, _, callers) in partners {
            for _ in 0..callers {
                let (budget, taken, done) = (budget.clone(), taken.clone(), done.clone());
                tasks.spawn(async move {
                    while !done.load(Ordering::SeqCst) {
                        budget.take(partner).await.expect("Redis answers");
                        let mut taken = taken.lock().expect("not poisoned");
                        if taken.len() < total {
                            taken.push(partner);
                        } else {
                            done.store(true, Ordering::SeqCst);
                        }
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    delete_keys(SHARED_REDIS, &prefix).await;
    let taken = taken.lock().expect("not poisoned");
    let mut counts = HashMap::new();
    // The first tenth of a second is the GCRA's start: count the calls after it, when all wait.
    for partner in taken
        .iter()
        .skip(usize::try_from(per_second).unwrap_or(0) / 10)
    {
        *counts.entry(*partner).or_insert(0) += 1;
    }
    counts
}

fn share_of(counts: &HashMap<&str, usize>, partner: &str) -> f64 {
    let all: usize = counts.values().sum();
    counts.get(partner).copied().unwrap_or(0) as f64 / all.max(1) as f64
}

#[tokio::test]
async fn a_partner_with_one_job_gets_its_equal_share_while_another_floods_with_eight() {
    // Without the turns, calls go to whoever asks first: B's one caller against A's eight
    // would get about one call in nine.
    let process = [(A, 1, 8), (B, 1, 1)];
    let counts = share_out(200, 500, &[&process, &process]).await;
    let b = share_of(&counts, B);
    assert!(
        (0.40..=0.60).contains(&b),
        "B's share {b:.2} of {counts:?}: equal weights share the calls equally"
    );
}

#[tokio::test]
async fn partners_that_all_wait_share_the_calls_by_weight() {
    let process = [(A, 3, 4), (B, 1, 4)];
    let counts = share_out(200, 500, &[&process, &process, &process]).await;
    let a = share_of(&counts, A);
    assert!(
        (0.675..=0.825).contains(&a),
        "A's share {a:.2} of {counts:?}: weights 3:1 give A three calls in four (±10 %)"
    );
}

#[tokio::test]
async fn a_partner_waiting_in_one_process_gets_its_share_from_a_flood_in_others() {
    // Each process asks Redis only for the partners waiting in it: the turns must hold across
    // processes, not only among the calls one process sees.
    let (flood, one): (&[Callers], &[Callers]) = (&[(A, 1, 16)], &[(B, 1, 1)]);
    let counts = share_out(200, 500, &[flood, flood, one]).await;
    let b = share_of(&counts, B);
    assert!(
        (0.40..=0.60).contains(&b),
        "B's share {b:.2} of {counts:?}: B asks from a process of its own and still gets its turn"
    );
}

/// Moves every message of `lane` to where the release before the lanes would have put it: the
/// first half into the shared jobs queue (as its intake published: the jobs exchange, the `job`
/// key, no partner header), the rest into one of its retry queues, declared with its arguments
/// (dead-lettering into the jobs exchange under the `job` key). Returns how many moved.
async fn move_to_the_old_queues(prefix: &str, lane: &str, old_retry: &str) -> usize {
    use lapin::options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable, LongString};

    let connection = crate::helpers::shared_amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut args = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(500));
    args.insert(
        "x-dead-letter-exchange".into(),
        text(&format!("{prefix}.jobs")),
    );
    args.insert("x-dead-letter-routing-key".into(), text("job"));
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    channel
        .queue_declare(
            old_retry.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("the old retry queue, with its old arguments");
    let mut moved = 0;
    while let Some(message) = channel
        .basic_get(lane.into(), BasicGetOptions::default())
        .await
        .expect("get")
    {
        let delivery = message.delivery;
        // The old release's message: the same body and type, no partner header.
        let properties = lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_type(delivery.properties.kind().clone().unwrap_or_default())
            .with_message_id(delivery.properties.message_id().clone().unwrap_or_default());
        let (exchange, key) = if moved % 2 == 0 {
            (format!("{prefix}.jobs"), "job".to_owned())
        } else {
            (String::new(), old_retry.to_owned())
        };
        channel
            .basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        moved += 1;
    }
    let _ = connection.close(200, "done".into()).await;
    moved
}

#[tokio::test]
async fn jobs_left_by_the_release_before_the_lanes_are_worked_once_each() {
    use crate::helpers::sim::subscriptions_by_pay_id;

    // The intake takes the requests while no worker runs: they wait in the partner's lane.
    let mut stack = TestStack::deployment().start().await;
    let mut pay_ids = Vec::new();
    for _ in 0..6 {
        pay_ids.push(stack.send(|_| {}).await);
    }
    let prefix = stack.settings.amqp.prefix.clone();
    let topology = Topology::from_settings(&stack.settings);
    let old_retry = format!("{prefix}.retry.1s");
    let lane = topology.lane(crate::helpers::PARTNER);
    assert_eq!(move_to_the_old_queues(&prefix, &lane, &old_retry).await, 6);

    // A worker of this release finds them in the shared queue and, through the old retry
    // queue, there again.
    stack.spawn_worker().await;
    assert!(
        stack
            .wait_for_events(&pay_ids, Duration::from_secs(30))
            .await,
        "every job of the release before got its result"
    );
    let stats = stack.sim().stats().await;
    let subscriptions = subscriptions_by_pay_id(&stats);
    for pay_id in &pay_ids {
        assert_eq!(
            subscriptions.get(pay_id).copied(),
            Some(1),
            "{pay_id}: one subscription"
        );
    }
    stack.teardown().await;
    crate::helpers::delete_names_for_test(&[old_retry]).await;
}
