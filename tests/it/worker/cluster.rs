//! `redis.url` naming a Redis Cluster's nodes: the intake and the worker run unchanged on it.

use std::time::Duration;

use autorenew::sim::faults::FaultConfig;
use serde_json::json;

use super::stack::{Stack, subscriptions_by_pay_id};
use crate::helpers::private::PrivateRedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_on_a_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(PrivateRedisCluster::start)
        .await
        .expect("cluster");
    let url = cluster.url();
    let mut stack = Stack::start_with(FaultConfig::default(), |s| {
        s.redis.url = url.into();
    })
    .await;
    stack.spawn_worker().await;

    // Many payIds, so their keys spread over every node's slots.
    let mut pay_ids = Vec::new();
    for i in 0..30 {
        pay_ids.push(
            stack
                .send(|r| r["email"] = json!(format!("cluster{i}@example.com")))
                .await,
        );
    }
    let all = stack
        .wait_for_events(&pay_ids, Duration::from_secs(30))
        .await;
    let again = stack.result_query(&pay_ids[0]).await;
    let mut conflicting = crate::helpers::valid_request();
    conflicting["payId"] = json!(pay_ids[1]);
    conflicting["payAmount"] = json!("1.00");
    let conflict = stack.intake.subscribe(conflicting).await;

    assert!(all, "every job finished");
    assert_eq!(again.body["status"], "active");
    assert_eq!((conflict.status, conflict.code()), (409, "PAY_ID_CONFLICT"));
    let subscriptions = subscriptions_by_pay_id(&stack.sim_stats().await);
    assert!(pay_ids.iter().all(|p| subscriptions.get(p) == Some(&1)));
    stack.teardown().await;
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .expect("stop");
}
