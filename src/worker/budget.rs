//! The shared Stripe budget, kept in Redis, as the gateway's [`Budget`].

use std::future::Future;
use std::pin::Pin;

use crate::store::Store;
use crate::stripe::Budget;

pub struct RedisBudget {
    pub store: Store,
    pub per_second: u32,
}

impl Budget for RedisBudget {
    fn take(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            self.store
                .take_stripe_budget(self.per_second)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
