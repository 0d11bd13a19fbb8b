//! The harness's own promise (`helpers/stack.rs`): a test that fails leaves nothing of its stack
//! on the shared broker and Redis, so the next run does not trip over it.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::helpers::{TestStack, shared_amqp};

#[tokio::test]
async fn a_stack_whose_test_panics_deletes_its_queues_and_keys() {
    // Arrange: a stack that has declared its queues and holds a request in them, then a
    // panic, as a failed assertion makes; the panic drops the stack as it unwinds.
    let mut prefixes = None;
    let failed_test = AssertUnwindSafe(async {
        let stack = TestStack::builder().intake().start().await;
        stack.send(|_| {}).await;
        prefixes = Some((
            stack.settings.amqp.prefix.clone(),
            stack.settings.redis.key_prefix.clone(),
        ));
        panic!("a failed assertion, on purpose");
    });

    // Act
    let ended = failed_test.catch_unwind().await;
    let (queue_prefix, key_prefix) = prefixes.expect("the stack started");

    // Assert
    assert!(ended.is_err(), "the test panicked");
    let connection = shared_amqp().await;
    let channel = connection.create_channel().await.expect("a channel");
    let jobs = format!("{queue_prefix}.jobs");
    let declared = channel
        .queue_declare(
            jobs.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(declared.is_err(), "{jobs} is still on the broker");
    let _ = connection.close(200, "done".into()).await;
    let mut redis = redis::Client::open(crate::helpers::SHARED_REDIS)
        .expect("the Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let left: Vec<String> = tokio::time::timeout(
        Duration::from_secs(10),
        redis::cmd("KEYS")
            .arg(format!("{key_prefix}:*"))
            .query_async(&mut redis),
    )
    .await
    .expect("Redis answers")
    .expect("KEYS");
    assert!(left.is_empty(), "keys left: {left:?}");
}
