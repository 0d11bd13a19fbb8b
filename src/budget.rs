//! The Stripe budget every worker and intake shares, kept in Redis, as the gateway's
//! [`Budget`]: Stripe's rate for the whole deployment, shared between the partners by their
//! `weight` (docs/design.md, "Partners served in turn").
//!
//! A process has one gate: the calls waiting in it queue here, by partner, and one task asks
//! Redis on behalf of all of them, a call at a time. Each call polling Redis on its own would
//! make every one of a worker's jobs ask once an interval: 9,000 to 12,500 script runs a second
//! at 100 calls/s (a tenth of that through the gates), and every other Redis command the jobs
//! make waited behind them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::store::{BudgetWaiter, Store, StoreError, Turn};
use crate::stripe::Budget;

/// Where a gate asks for turns: Redis's turn script ([`Store::take_stripe_turn`]), or, in the
/// simulation, the same script on the twin's keyspace.
pub trait TurnSource: Send + Sync {
    /// One call's turn for one of `waiting` under a budget of `per_second`, or how long to
    /// wait before asking again.
    fn take_turn<'a>(
        &'a self,
        per_second: u32,
        waiting: &'a [BudgetWaiter<'a>],
    ) -> BoxFuture<'a, Result<Turn, StoreError>>;
}

impl TurnSource for Store {
    fn take_turn<'a>(
        &'a self,
        per_second: u32,
        waiting: &'a [BudgetWaiter<'a>],
    ) -> BoxFuture<'a, Result<Turn, StoreError>> {
        self.take_stripe_turn(per_second, waiting).boxed()
    }
}

/// The answer a waiting call gets: it may go, or the budget could not be asked.
type Answer = Result<(), String>;

/// The budget in Redis: `per_second` calls for everyone together, shared by weight.
pub struct SharedBudget {
    gate: Arc<Gate>,
    /// Ends a wait for budget: a worker's drain is out of time. The job then hands itself
    /// back while the broker connection is still open.
    give_up: CancellationToken,
}

/// What the process's calls wait in, and what the task asking for them reads.
struct Gate {
    turns: Arc<dyn TurnSource>,
    per_second: u32,
    /// Each configured partner's weight; a partner not configured (and calls of no partner)
    /// weighs 1.
    weights: HashMap<String, u32>,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// Each partner's waiting calls, oldest first. Ordered by name, so the order the partners
    /// are listed in (which breaks ties) does not change from one ask to the next.
    calls: BTreeMap<String, VecDeque<oneshot::Sender<Answer>>>,
    /// Whether the task asking Redis is running; it stops when nothing waits.
    asking: bool,
}

impl SharedBudget {
    /// The budget `settings` describe (`stripe.max_requests_per_second`, each partner's
    /// `weight`), in `store`; waits end when `give_up` is cancelled.
    pub fn new(settings: &Settings, store: Store, give_up: CancellationToken) -> Self {
        let weights = settings
            .partners
            .iter()
            .map(|p| (p.code.clone(), p.weight))
            .collect();
        Self::asking(
            Arc::new(store),
            settings.stripe.max_requests_per_second,
            weights,
            give_up,
        )
    }

    /// A budget of `per_second`, shared by `weights` (a partner not listed weighs 1), asked of
    /// `turns`; waits end when `give_up` is cancelled.
    pub fn asking(
        turns: Arc<dyn TurnSource>,
        per_second: u32,
        weights: HashMap<String, u32>,
        give_up: CancellationToken,
    ) -> Self {
        let gate = Gate {
            turns,
            per_second,
            weights,
            waiting: Mutex::default(),
        };
        SharedBudget {
            gate: Arc::new(gate),
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
            let (answer, answered) = oneshot::channel();
            let start_asking = {
                let mut waiting = self.gate.waiting();
                waiting
                    .calls
                    .entry(partner.to_owned())
                    .or_default()
                    .push_back(answer);
                !std::mem::replace(&mut waiting.asking, true)
            };
            if start_asking {
                tokio::spawn(self.gate.clone().ask());
            }
            // Giving up drops the receiver: the gate skips a call nobody waits for any more.
            tokio::select! {
                () = self.give_up.cancelled() => Err("the worker is stopping".to_owned()),
                answer = answered => answer.unwrap_or_else(|_| Err("the budget gate stopped".to_owned())),
            }
        })
    }
}

impl Gate {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        // Nothing panics while holding it; if something did, the queues are still whole.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks Redis for the calls waiting here until none is left: one call at a time, for the
    /// partner whose turn it is.
    async fn ask(self: Arc<Self>) {
        loop {
            let listed: Vec<(String, u32, usize)> = {
                let mut waiting = self.waiting();
                for calls in waiting.calls.values_mut() {
                    calls.retain(|call| !call.is_closed());
                }
                waiting.calls.retain(|_, calls| !calls.is_empty());
                if waiting.calls.is_empty() {
                    waiting.asking = false;
                    return;
                }
                waiting
                    .calls
                    .iter()
                    .map(|(partner, calls)| {
                        let weight = self.weights.get(partner).copied().unwrap_or(1);
                        (partner.clone(), weight, calls.len())
                    })
                    .collect()
            };
            let waiters: Vec<BudgetWaiter<'_>> = listed
                .iter()
                .map(|(partner, weight, calls)| BudgetWaiter {
                    partner,
                    weight: *weight,
                    calls: *calls,
                })
                .collect();
            match self.turns.take_turn(self.per_second, &waiters).await {
                Ok(Turn::Granted(index)) => self.let_one_go(&listed[index].0),
                Ok(Turn::Wait(wait)) => tokio::time::sleep(wait).await,
                Err(error) => self.fail_all(&error.to_string()),
            }
        }
    }

    /// The oldest call of `partner` that still waits goes.
    fn let_one_go(&self, partner: &str) {
        let mut waiting = self.waiting();
        let Some(calls) = waiting.calls.get_mut(partner) else {
            return;
        };
        while let Some(call) = calls.pop_front() {
            if call.send(Ok(())).is_ok() {
                return;
            }
        }
    }

    /// Redis could not be asked: every call waiting here learns it, as each would have asking
    /// on its own, and its job decides (a job hands itself back while Redis is away).
    fn fail_all(&self, error: &str) {
        let mut waiting = self.waiting();
        for calls in waiting.calls.values_mut() {
            for call in calls.drain(..) {
                let _ = call.send(Err(error.to_owned()));
            }
        }
    }
}
