//! The shared Stripe budget, kept in Redis, as the gateway's [`Budget`].

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::stripe::Budget;

pub struct RedisBudget {
    pub store: Store,
    pub per_second: u32,
    /// Ends a wait for budget: the worker's drain is out of time ([`super::Worker::give_up`]).
    /// The job then hands itself back while the broker connection is still open.
    pub give_up: CancellationToken,
}

impl Budget for RedisBudget {
    fn take(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            tokio::select! {
                () = self.give_up.cancelled() => Err("the worker is stopping".to_owned()),
                taken = self.store.take_stripe_budget(self.per_second) => {
                    taken.map_err(|e| e.to_string())
                }
            }
        })
    }
}
