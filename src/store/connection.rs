//! One Redis, or a Redis Cluster, behind one handle. `redis.url` names a cluster by listing
//! several of its nodes, comma-separated; every key a script touches shares one hash tag, so the
//! same commands and scripts run on both.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::StoreError;

/// Where commands go: connected lazily, reconnected by the client itself.
#[derive(Clone)]
pub(super) enum Redis {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

pub(super) struct LazyCluster {
    client: ClusterClient,
    /// `None` until the first command, and again after [`Redis::renew`].
    connection: tokio::sync::Mutex<Option<ClusterConnection>>,
}

/// A connection to send commands on.
#[derive(Clone)]
pub(crate) enum Handle {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Handle {
    /// On a cluster, a pipeline must keep to one slot.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Handle::Cluster(_))
    }
}

impl Redis {
    /// Nothing is sent until the first command, so start-up does not depend on Redis.
    pub(super) fn open(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let nodes: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        if nodes.len() > 1 {
            let client = ClusterClient::builder(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()?;
            return Ok(Redis::Cluster(Arc::new(LazyCluster {
                client,
                connection: tokio::sync::Mutex::new(None),
            })));
        }
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Redis::Single(ConnectionManager::new_lazy_with_config(
            client, config,
        )?))
    }

    /// A handle to send on; for a cluster, the first call connects (within `timeout`).
    pub(super) async fn handle(&self, timeout: Duration) -> Result<Handle, StoreError> {
        match self {
            Redis::Single(manager) => Ok(Handle::Single(manager.clone())),
            Redis::Cluster(lazy) => {
                let connect = async {
                    let mut slot = lazy.connection.lock().await;
                    if let Some(connection) = slot.as_ref() {
                        return Ok(connection.clone());
                    }
                    let connection = lazy.client.get_async_connection().await?;
                    *slot = Some(connection.clone());
                    Ok::<_, redis::RedisError>(connection)
                };
                match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok(connection)) => Ok(Handle::Cluster(connection)),
                    Ok(Err(error)) => Err(error.into()),
                    Err(_) => Err(StoreError::Timeout(timeout)),
                }
            }
        }
    }

    /// Drops a cluster connection that has stopped answering, so the next command connects
    /// afresh and reads the slots from the nodes of `redis.url`. The client refreshes its slot
    /// map on a MOVED answer, but a master that died without one can leave a slot pointing at
    /// it (seen once in CI's Redis node-loss slice: both workers paused at the kill and never
    /// resumed, while the intake went on). A single Redis reconnects by itself.
    pub(super) async fn renew(&self) {
        if let Redis::Cluster(lazy) = self {
            *lazy.connection.lock().await = None;
        }
    }
}

impl ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Handle::Single(connection) => connection.req_packed_command(cmd),
            Handle::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Handle::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Handle::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Single(connection) => connection.get_db(),
            Handle::Cluster(connection) => connection.get_db(),
        }
    }
}
