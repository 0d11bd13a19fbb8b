//! `redis.url` naming a Redis Cluster's nodes: the intake and the worker run unchanged on it.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::private::PrivateRedisCluster;
use crate::helpers::sim::subscriptions_by_pay_id;
use crate::helpers::{TestStack, valid_request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_on_a_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(PrivateRedisCluster::start)
        .await
        .expect("cluster");
    let url = cluster.url();
    let stack = TestStack::deployment()
        .settings(|s| {
            s.redis.url = url.into();
        })
        .workers(1)
        .start()
        .await;

    // Many payIds, so their keys spread over every node's slots; sent all at once, so the
    // intake marks their records enqueued in batches that span the slots.
    let requests: Vec<Value> = (0..30)
        .map(|i| {
            let mut request = valid_request();
            request["pm_id"] = json!("pm_card_visa");
            request["email"] = json!(format!("cluster{i}@example.com"));
            request
        })
        .collect();
    let pay_ids: Vec<String> = requests
        .iter()
        .map(|r| r["payId"].as_str().expect("payId").to_owned())
        .collect();
    let accepted = join_all(requests.iter().map(|r| stack.intake().subscribe(r.clone()))).await;
    let all = stack
        .wait_for_events(&pay_ids, Duration::from_secs(30))
        .await;
    // Every record was marked enqueued: the partner's retries are answered at once, not held
    // as busy until the claims' leases run out.
    let retried = join_all(requests.iter().map(|r| stack.intake().subscribe(r.clone()))).await;
    let again = stack.result_query(&pay_ids[0]).await;
    let mut conflicting = crate::helpers::valid_request();
    conflicting["payId"] = json!(pay_ids[1]);
    conflicting["payAmount"] = json!("1.00");
    let conflict = stack.intake().subscribe(conflicting).await;

    assert!(accepted.iter().all(|a| a.status == 200), "{accepted:?}");
    assert!(all, "every job finished");
    assert!(
        retried
            .iter()
            .all(|a| a.status == 200 && a.body["operateCode"] == "S"),
        "{retried:?}"
    );
    assert_eq!(again.body["status"], "active");
    assert_eq!((conflict.status, conflict.code()), (409, "PAY_ID_CONFLICT"));
    let subscriptions = subscriptions_by_pay_id(&stack.sim().stats().await);
    assert!(pay_ids.iter().all(|p| subscriptions.get(p) == Some(&1)));
    stack.teardown().await;
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .expect("stop");
}
