//! The Stripe budget every worker and intake shares, kept in Redis, as the gateway's
//! [`Budget`]: Stripe's rate for the whole deployment, shared between the partners by their
//! `weight` (docs/design.md, "Partners served in turn").

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::store::{BudgetShare, Store};
use crate::stripe::Budget;

/// The budget in Redis: `per_second` calls for everyone together, shared by weight.
pub struct SharedBudget {
    store: Store,
    per_second: u32,
    /// Each configured partner's weight; a partner not configured (and calls of no partner)
    /// weighs 1.
    weights: HashMap<String, u32>,
    /// Ends a wait for budget: a worker's drain is out of time. The job then hands itself
    /// back while the broker connection is still open.
    give_up: CancellationToken,
}

impl SharedBudget {
    /// The budget `settings` describe (`stripe.max_requests_per_second`, each partner's
    /// `weight`), in `store`; waits end when `give_up` is cancelled.
    pub fn new(settings: &Settings, store: Store, give_up: CancellationToken) -> Self {
        SharedBudget {
            store,
            per_second: settings.stripe.max_requests_per_second,
            weights: settings
                .partners
                .iter()
                .map(|p| (p.code.clone(), p.weight))
                .collect(),
            give_up,
        }
    }
}

impl Budget for SharedBudget {
    fn take<'a>(
        &'a self,
        partner: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let share = BudgetShare {
                partner,
                weight: self.weights.get(partner).copied().unwrap_or(1),
            };
            tokio::select! {
                () = self.give_up.cancelled() => Err("the worker is stopping".to_owned()),
                taken = self.store.take_stripe_budget(self.per_second, share) => {
                    taken.map_err(|e| e.to_string())
                }
            }
        })
    }
}
