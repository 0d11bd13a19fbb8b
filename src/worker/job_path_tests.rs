//! The job path against the in-memory adapters, one scenario per way the exactly-once promise was once found broken
//! (docs/design.md, the deterministic simulation); each one
//! fails on the behaviour the issue describes. Paused tokio time: every delay is virtual.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::memory::{
    MemoryQueue, MemoryStore, MemoryStripe, QueueDelays, QueuedJob, StripeFault as Fault, Trace,
    VirtualClock,
};
use super::message::{self, Message};
use super::ports::{
    CreateSent, Disposition, Incoming, JobStart, JobStore, Outcome, StripeApi, forward,
};
use super::{JobContext, JobPorts, JobSettings, RetryPolicy};
use crate::config::{PlanSettings, Settings};
use crate::domain::job::JOB_MESSAGE_TYPE;
use crate::domain::renewal::{Applied, RenewalChange, RenewalUpdate};
use crate::domain::{FailureCode, FinalResult, Job, PayKey};
use crate::store::StoreError;
use crate::stripe::{
    Attached, CreatedCustomer, FoundSubscription, NewCustomer, NewSubscription, PaymentError,
    PriceSpec, StripeFailure, Subscribed, SubscriptionState, WriteFailure,
};

/// Decodes and handles a message as the consumer does.
async fn handle(ctx: &JobContext, incoming: &Incoming, token: &str) -> Outcome {
    message::handle(ctx, &Message::decode(incoming), incoming, token).await
}

async fn after_panic(ctx: &JobContext, incoming: &Incoming, token: &str) -> Outcome {
    message::after_panic(ctx, &Message::decode(incoming), incoming, token).await
}

const TIMEOUT: Duration = Duration::from_secs(2);
const DELIVERY_LIMIT: u32 = 5;
const RETRY_STAGES: usize = 2;
const EPOCH_MS: u64 = 1_800_000_000_000;
/// `worker.give_up_after` of the bench: an hour, so a test can pass it on the paused clock.
const GIVE_UP_AFTER: Duration = Duration::from_secs(3600);

/// Stripe's calls as the job makes them, with scripted misbehaviour on top of the fake.
#[derive(Clone)]
struct Scripted {
    inner: MemoryStripe,
    /// Subscription lookups fail (transient), as while Stripe is down.
    lookups_fail: Arc<AtomicBool>,
    /// Subscription creates happen, but their answer is lost (a 500 after the write).
    lose_create_answers: Arc<AtomicBool>,
    /// The customer lookup panics (a bug in the worker).
    panic_on_customer: Arc<AtomicBool>,
    /// The customer lookup fails (transient), as while Stripe is down.
    customers_fail: Arc<AtomicBool>,
    /// The subscription create panics before it is sent.
    panic_on_create: Arc<AtomicBool>,
    /// Faults the next subscription creates meet at the fake, one each, in order.
    create_faults: Arc<Mutex<std::collections::VecDeque<Fault>>>,
}

impl StripeApi for Scripted {
    fn find_customer<'a>(
        &'a self,
        partner_code: &'a str,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StripeFailure>> {
        assert!(
            !self.panic_on_customer.load(Ordering::SeqCst),
            "a bug in the customer step"
        );
        if self.customers_fail.load(Ordering::SeqCst) {
            return async { Err(StripeFailure::Transient("503".into())) }.boxed();
        }
        self.inner.find_customer(partner_code, email)
    }

    fn create_customer<'a>(
        &'a self,
        new: &'a NewCustomer<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<CreatedCustomer, StripeFailure>> {
        self.inner.create_customer(new, key)
    }

    fn attach_payment_method<'a>(
        &'a self,
        payment_method: &'a str,
        customer: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Attached, StripeFailure>> {
        self.inner
            .attach_payment_method(payment_method, customer, key)
    }

    fn price_product<'a>(&'a self, price: &'a str) -> BoxFuture<'a, Result<String, StripeFailure>> {
        self.inner.price_product(price)
    }

    fn find_price<'a>(
        &'a self,
        lookup_key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, StripeFailure>> {
        self.inner.find_price(lookup_key)
    }

    fn create_price<'a>(
        &'a self,
        spec: &'a PriceSpec<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(String, String), StripeFailure>> {
        self.inner.create_price(spec, key)
    }

    fn find_subscription<'a>(
        &'a self,
        customer: &'a str,
        pay_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Subscribed>, StripeFailure>> {
        if self.lookups_fail.load(Ordering::SeqCst) {
            return async { Err(StripeFailure::Transient("503".into())) }.boxed();
        }
        self.inner.find_subscription(customer, pay_id)
    }

    fn create_subscription<'a>(
        &'a self,
        new: &'a NewSubscription<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Subscribed, WriteFailure>> {
        assert!(
            !self.panic_on_create.load(Ordering::SeqCst),
            "a bug just before the create"
        );
        let fault = self
            .create_faults
            .lock()
            .ok()
            .and_then(|mut f| f.pop_front());
        if let Some(fault) = fault {
            // The create is the fake's next call: the scripted fault is its.
            self.inner.script(&[fault]);
        }
        async move {
            let made = self.inner.create_subscription(new, key).await;
            if self.lose_create_answers.load(Ordering::SeqCst) {
                return Err(StripeFailure::Unknown("500 after the write".into()).into());
            }
            made
        }
        .boxed()
    }

    #[rustfmt::skip]
    forward! { via inner;
        cancel_at_period_end<'a>(subscription: &'a str, key: &'a str) -> Result<SubscriptionState, StripeFailure>;
        cancel_now<'a>(subscription: &'a str, key: &'a str) -> Result<SubscriptionState, StripeFailure>;
        subscription_state<'a>(subscription: &'a str) -> Result<SubscriptionState, StripeFailure>;
        subscription_metadata<'a>(subscription: &'a str) -> Result<std::collections::HashMap<String, String>, StripeFailure>;
        search_subscription<'a>(partner_code: &'a str, pay_id: &'a str) -> Result<Option<FoundSubscription>, StripeFailure>;
        invoice_payment_error<'a>(invoice: &'a str, payment_intent: Option<&'a str>) -> Result<Option<PaymentError>, StripeFailure>;
        customer_mark<'a>(partner_code: &'a str, email: &'a str, name: &'a str) -> Result<Option<String>, StripeFailure>;
        mark_customer<'a>(mark: &'a crate::stripe::CustomerMark<'a>, key: &'a str) -> Result<(), StripeFailure>;
    }
}

/// After a store call: the call, whether the payId was locked, whether a result was stored.
type StoreState = (&'static str, bool, bool);

/// Every state the store went through, call by call.
#[derive(Clone)]
struct Watched {
    inner: MemoryStore,
    states: Arc<Mutex<Vec<StoreState>>>,
}

impl Watched {
    fn record(&self, call: &'static str, pay_id: &PayKey) {
        let locked = self
            .inner
            .held_locks()
            .iter()
            .any(|(id, _)| *id == pay_id.to_string());
        let stored = self.inner.stored_result(pay_id).is_some();
        if let Ok(mut states) = self.states.lock() {
            states.push((call, locked, stored));
        }
    }

    fn watch<'a, T: Send + 'a>(
        &'a self,
        call: &'static str,
        pay_id: &'a PayKey,
        work: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        async move {
            let answer = work.await;
            self.record(call, pay_id);
            answer
        }
        .boxed()
    }
}

impl JobStore for Watched {
    fn authorized_customer<'a>(
        &'a self,
        pay_key: &'a PayKey,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        self.inner.authorized_customer(pay_key, email)
    }

    fn customer_of<'a>(
        &'a self,
        partner: &'a str,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        self.inner.customer_of(partner, email)
    }

    fn remember_customer<'a>(
        &'a self,
        partner: &'a str,
        email: &'a str,
        customer: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.remember_customer(partner, email, customer)
    }

    fn lock_price<'a>(
        &'a self,
        lookup_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.lock_price(lookup_key, token, ttl)
    }

    fn unlock_price<'a>(
        &'a self,
        lookup_key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.unlock_price(lookup_key, token)
    }

    fn begin<'a>(
        &'a self,
        pay_id: &'a PayKey,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<JobStart, StoreError>> {
        self.watch("begin", pay_id, self.inner.begin(pay_id, token, ttl))
    }

    fn extend_lock<'a>(
        &'a self,
        pay_id: &'a PayKey,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.watch("extend", pay_id, self.inner.extend_lock(pay_id, token, ttl))
    }

    fn unlock<'a>(
        &'a self,
        pay_id: &'a PayKey,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.watch("unlock", pay_id, self.inner.unlock(pay_id, token))
    }

    fn record_create<'a>(
        &'a self,
        pay_id: &'a PayKey,
        token: &'a str,
        sent: &'a CreateSent,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.watch(
            "record_create",
            pay_id,
            self.inner.record_create(pay_id, token, sent),
        )
    }

    fn created<'a>(
        &'a self,
        pay_id: &'a PayKey,
    ) -> BoxFuture<'a, Result<Option<CreateSent>, StoreError>> {
        self.watch("created", pay_id, self.inner.created(pay_id))
    }

    fn finish<'a>(
        &'a self,
        pay_id: &'a PayKey,
        token: &'a str,
        result: &'a FinalResult,
    ) -> BoxFuture<'a, Result<Option<FinalResult>, StoreError>> {
        self.watch("finish", pay_id, self.inner.finish(pay_id, token, result))
    }

    #[rustfmt::skip]
    forward! { via inner;
        result<'a>(pay_key: &'a PayKey) -> Result<Option<FinalResult>, StoreError>;
        has_record<'a>(pay_key: &'a PayKey) -> Result<bool, StoreError>;
        lock<'a>(pay_key: &'a PayKey, token: &'a str, ttl: Duration) -> Result<bool, StoreError>;
        apply_renewal<'a>(pay_key: &'a PayKey, update: &'a RenewalUpdate) -> Result<Applied, StoreError>;
        restore<'a>(pay_key: &'a PayKey, result: &'a FinalResult, state: RenewalChange, version: u64) -> Result<FinalResult, StoreError>;
    }
}

/// One worker's world: the fakes, the scripted Stripe on top, and the job's context.
struct Bench {
    queue: MemoryQueue,
    store: MemoryStore,
    stripe: MemoryStripe,
    scripted: Scripted,
    watched: Watched,
    ctx: Arc<JobContext>,
}

fn bench() -> Bench {
    let trace = Trace::default();
    let queue = MemoryQueue::new(
        QueueDelays {
            retry: vec![Duration::from_secs(1); RETRY_STAGES],
            lock: Duration::from_millis(100),
            reconcile: Duration::from_secs(30),
        },
        DELIVERY_LIMIT,
        trace.clone(),
    );
    let store = MemoryStore::new(1, Duration::from_millis(1), trace.clone());
    // The intake's claim keeps the payId's record before it publishes the job.
    store.keep_record(&job().pay_key());
    let stripe = MemoryStripe::new(1, TIMEOUT, trace);
    stripe.add_price("price_basic", "prod_basic");
    let scripted = Scripted {
        inner: stripe.clone(),
        lookups_fail: Arc::default(),
        lose_create_answers: Arc::default(),
        panic_on_customer: Arc::default(),
        customers_fail: Arc::default(),
        panic_on_create: Arc::default(),
        create_faults: Arc::default(),
    };
    let watched = Watched {
        inner: store.clone(),
        states: Arc::default(),
    };
    let settings = JobSettings {
        plans: BTreeMap::from([(
            "basic".to_owned(),
            PlanSettings {
                price: Some("price_basic".into()),
                interval: "month".into(),
            },
        )]),
        payment_behavior: "allow_incomplete".into(),
        retry: RetryPolicy {
            stop: tokio_util::sync::CancellationToken::new(),
            step_retries: 2,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            jitter: false,
        },
        lock_ttl: Duration::from_secs(3),
        give_up_after: GIVE_UP_AFTER,
        delivery_limit: DELIVERY_LIMIT,
        prices: Mutex::default(),
    };
    let ctx = Arc::new(JobContext {
        ports: JobPorts {
            queue: Arc::new(queue.clone()),
            store: Arc::new(watched.clone()),
            stripe: Arc::new(scripted.clone()),
            clock: Arc::new(VirtualClock::new(EPOCH_MS)),
        },
        settings,
    });
    Bench {
        queue,
        store,
        stripe,
        scripted,
        watched,
        ctx,
    }
}

fn job() -> Job {
    serde_json::from_value(serde_json::json!({
        "payId": "pay-1",
        "partnerCode": "partner1",
        "email": "someone@example.com",
        "plan_id": "basic",
        "pm_id": "pm_1",
        "payAmount": "9.99",
        "amountMinor": 999,
        "payCurrency": "usd",
        "tradeType": "subscription",
        "acceptedAt": "2027-01-15T08:00:00Z",
        "requestId": "req-1",
    }))
    .expect("a valid job")
}

/// A first delivery of a first publish (the intake's, or a replay's).
fn first_delivery(job: &Job) -> Incoming {
    Incoming {
        kind: JOB_MESSAGE_TYPE.to_owned(),
        body: job.encode(),
        message_id: job.pay_id.to_string(),
        attempt: 1,
        redelivered: false,
        parked: false,
        delivery_count: 0,
        partner: None,
    }
}

/// Makes, through the fake, what an earlier run of the job left in Stripe: the customer, the
/// attached card, and (when `subscribed`) the subscription under `ar-pay-1-sub-g<generation>`.
async fn earlier_run(bench: &Bench, job: &Job, generation: u32, subscribed: bool) -> CreateSent {
    let stripe = &bench.stripe;
    let new = NewCustomer {
        partner_code: "partner1",
        email: job.email.as_str(),
        payment_method: "pm_1",
    };
    let customer = stripe
        .create_customer(&new, "earlier-customer")
        .await
        .expect("a customer with the card attached")
        .id;
    let sent = CreateSent {
        generation,
        sent_at_ms: EPOCH_MS,
        customer: customer.clone(),
        pay_method: "card".into(),
        scoped: true,
        payment_method: "pm_1".into(),
    };
    let ttl = Duration::from_secs(3);
    let earlier = bench.store.begin(&job.pay_key(), "earlier", ttl).await;
    assert!(matches!(earlier, Ok(JobStart::Locked { .. })));
    let recorded = bench
        .store
        .record_create(&job.pay_key(), "earlier", &sent)
        .await;
    assert_eq!(recorded.ok(), Some(true));
    bench
        .store
        .unlock(&job.pay_key(), "earlier")
        .await
        .expect("unlocked");
    if subscribed {
        let metadata = std::collections::HashMap::from([
            ("payId".to_owned(), "pay-1".to_owned()),
            ("partnerCode".to_owned(), "partner1".to_owned()),
            ("plan_id".to_owned(), "basic".to_owned()),
        ]);
        let new = NewSubscription {
            customer: &customer,
            price: "price_basic",
            payment_method: "pm_1",
            payment_behavior: "allow_incomplete",
            metadata,
        };
        stripe
            .create_subscription(&new, &format!("ar-pay-1-sub-g{generation}"))
            .await
            .expect("subscribed");
    }
    sent
}

/// Records `sent` as the payId's last create, as a job holding the lock would.
async fn rerecord(bench: &Bench, job: &Job, sent: &CreateSent) {
    let ttl = Duration::from_secs(3);
    let begun = bench.store.begin(&job.pay_key(), "rerecord", ttl).await;
    assert!(matches!(begun, Ok(JobStart::Locked { .. })));
    let recorded = bench
        .store
        .record_create(&job.pay_key(), "rerecord", sent)
        .await;
    assert_eq!(recorded.ok(), Some(true));
    bench
        .store
        .unlock(&job.pay_key(), "rerecord")
        .await
        .expect("unlocked");
}

fn subscriptions_of(bench: &Bench) -> Vec<String> {
    bench
        .stripe
        .subscriptions()
        .remove("pay-1")
        .unwrap_or_default()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// Hole 1: a copy (back from the lock-retry queue, or published again by the intake: attempt
/// 1, not redelivered) takes the lock the moment the first copy lets go of it.
#[tokio::test(start_paused = true)]
async fn a_copy_that_takes_the_lock_after_the_first_copy_finds_its_result_not_a_g0_create() {
    let bench = bench();
    let job = job();
    // The first copy's run made its subscription under g1 (a lookup had shown g0 made none).
    earlier_run(&bench, &job, 1, true).await;
    tokio::time::advance(Duration::from_secs(60)).await;

    let first = handle(&bench.ctx, &first_delivery(&job), "first").await;
    let states = bench.watched.states.lock().expect("states").clone();
    let copy = handle(&bench.ctx, &first_delivery(&job), "copy").await;

    assert_eq!(first.label, "succeeded");
    // From the lock taken to the end, never a moment with the lock free and no result: a
    // copy taking the lock then would find nothing and start over.
    let gap = states
        .iter()
        .skip(1)
        .find(|(_, locked, stored)| !locked && !stored);
    assert_eq!(gap, None, "the lock was free before the result was stored");
    assert_eq!(copy.label, "settled");
    assert_eq!(subscriptions_of(&bench).len(), 1, "no second subscription");
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_eq!(stored.sub_id, subscriptions_of(&bench)[0]);
}

/// Hole 2: `dlq replay` republishes at attempt 1, a day after the create went out under g1;
/// Stripe has forgotten every key by then.
#[tokio::test(start_paused = true)]
async fn a_replay_a_day_after_a_create_under_g1_looks_up_first_and_makes_no_second_subscription() {
    let bench = bench();
    let job = job();
    earlier_run(&bench, &job, 1, true).await;
    tokio::time::advance(Duration::from_secs(25 * 3600)).await;

    let replayed = handle(&bench.ctx, &first_delivery(&job), "replayed").await;

    assert_eq!(replayed.label, "succeeded");
    let subs = subscriptions_of(&bench);
    assert_eq!(subs.len(), 1, "a second subscription: {subs:?}");
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_eq!(stored.sub_id, subs[0]);
}

/// Hole 3: the attempts run out after a create whose answer was lost, and Stripe cannot
/// answer the lookups either: a subscription may exist, so the job must not end `failed`.
#[tokio::test(start_paused = true)]
async fn retries_spent_with_the_create_unknown_park_the_job_until_a_lookup_settles_it() {
    let bench = bench();
    let job = job();
    bench.scripted.lookups_fail.store(true, Ordering::SeqCst);
    bench
        .scripted
        .lose_create_answers
        .store(true, Ordering::SeqCst);
    let last_attempt = Incoming {
        attempt: RETRY_STAGES as u32 + 1,
        ..first_delivery(&job)
    };

    let spent = handle(&bench.ctx, &last_attempt, "last").await;

    assert_eq!(spent.label, "parked");
    assert_eq!(
        bench.store.stored_result(&job.pay_key()),
        None,
        "still processing"
    );
    assert!(bench.queue.events().is_empty(), "nothing announced yet");
    assert_eq!(
        subscriptions_of(&bench).len(),
        1,
        "the lost create happened"
    );

    // Stripe answers again; the parked copy comes back from the reconciliation queue.
    bench.scripted.lookups_fail.store(false, Ordering::SeqCst);
    bench
        .scripted
        .lose_create_answers
        .store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(31)).await;
    let parked = bench.queue.try_receive("test").expect("the parked copy");
    assert!(parked.incoming.parked);
    let settled = handle(&bench.ctx, &parked.incoming, "reconcile").await;

    assert_eq!(settled.label, "succeeded");
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_eq!(stored.sub_id, subscriptions_of(&bench)[0]);
}

/// A final answer stays final, so an outage is not one: a job whose retries are spent while
/// Stripe cannot answer stays `processing`, parked and tried again, until `give_up_after`; only
/// then, nothing having been sent, it ends `STRIPE_UNAVAILABLE`.
#[tokio::test(start_paused = true)]
async fn an_outage_past_the_retries_keeps_the_job_processing_until_give_up_after() {
    let bench = bench();
    let job = job();
    bench.scripted.customers_fail.store(true, Ordering::SeqCst);
    let last_attempt = Incoming {
        attempt: RETRY_STAGES as u32 + 1,
        ..first_delivery(&job)
    };

    let spent = handle(&bench.ctx, &last_attempt, "last").await;

    assert_eq!(spent.label, "parked");
    assert_eq!(
        bench.store.stored_result(&job.pay_key()),
        None,
        "still processing"
    );
    assert!(bench.queue.events().is_empty(), "nothing announced");
    tokio::time::advance(Duration::from_secs(31)).await;
    let parked = bench.queue.try_receive("test").expect("the parked copy");
    let again = handle(&bench.ctx, &parked.incoming, "again").await;
    assert_eq!(again.label, "parked", "tried again, still processing");
    assert_eq!(bench.store.stored_result(&job.pay_key()), None);

    tokio::time::advance(GIVE_UP_AFTER).await;
    let parked = bench.queue.try_receive("test").expect("the parked copy");
    let ended = handle(&bench.ctx, &parked.incoming, "late").await;

    assert_eq!(ended.label, "failed");
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_eq!(
        stored.error.map(|e| e.code),
        Some(FailureCode::StripeUnavailable)
    );
    assert!(subscriptions_of(&bench).is_empty());
}

/// Hole 4: no window makes a new key safe, so the setting that named one is accepted (an old
/// configuration still starts) and reported as deprecated, not obeyed.
#[test]
fn the_old_key_switch_setting_is_accepted_and_reported_deprecated() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let load = |switch_ms: Option<&str>| {
        let env = switch_ms
            .map(|ms| {
                std::collections::HashMap::from([(
                    "AUTORENEW__WORKER__KEY_SWITCH_AFTER_MS".to_owned(),
                    ms.to_owned(),
                )])
            })
            .unwrap_or_default();
        Settings::load_with_env(Some(&config), Some(env))
    };

    let old = load(Some("1")).expect("an old configuration still loads");
    let current = load(None).expect("the shipped configuration loads");

    let warned = old.deprecations();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("worker.key_switch_after_ms"),
        "{warned:?}"
    );
    assert!(warned[0].contains("ignored"), "{warned:?}");
    assert!(current.deprecations().is_empty());
}

/// The created record of the payId, as a copy would read it.
async fn recorded(bench: &Bench, job: &Job) -> CreateSent {
    bench
        .store
        .created(&job.pay_key())
        .await
        .expect("the store answers")
        .expect("a create was recorded")
}

/// A create sent long ago (past any multiple of the client's timeout) that a lookup cannot find
/// goes again under the same key: Stripe executes it now, and a new key is never needed.
#[tokio::test(start_paused = true)]
async fn an_empty_lookup_sends_the_create_again_under_the_same_key_however_old_the_send() {
    let bench = bench();
    let job = job();
    // The first create never reached Stripe; half an hour on (within `give_up_after`).
    earlier_run(&bench, &job, 0, false).await;
    tokio::time::advance(Duration::from_secs(1800)).await;

    let handled = handle(&bench.ctx, &first_delivery(&job), "copy").await;

    assert_eq!(handled.label, "succeeded");
    assert_eq!(subscriptions_of(&bench).len(), 1);
    assert_eq!(recorded(&bench, &job).await.generation, 0, "the same key");
}

/// Stripe may still be executing a create minutes after the client gave up on it. Its key is
/// sent again and answered 409 meanwhile; no new key goes out beside it, however long it runs.
#[tokio::test(start_paused = true)]
async fn a_create_still_executing_at_stripe_gets_its_key_again_never_a_new_one() {
    let bench = bench();
    let job = job();
    if let Ok(mut faults) = bench.scripted.create_faults.lock() {
        faults.push_back(Fault::Stalled);
    }

    let first = handle(&bench.ctx, &first_delivery(&job), "first").await;
    assert_eq!(first.label, "retry", "timed out, then 409s: tried later");
    // Far past twice the client's timeout, while the first create still runs at Stripe.
    tokio::time::advance(Duration::from_secs(60)).await;
    let copy = bench.queue.try_receive("test").expect("the retry");
    let again = handle(&bench.ctx, &copy.incoming, "again").await;

    assert_eq!(again.label, "retry", "{again:?}");
    assert!(subscriptions_of(&bench).is_empty(), "still executing");
    assert_eq!(
        recorded(&bench, &job).await.generation,
        0,
        "never a new key"
    );

    // The first create ends; the next copy's lookup finds what it made.
    tokio::time::advance(Duration::from_secs(300)).await;
    let copy = bench.queue.try_receive("test").expect("the retry");
    let settled = handle(&bench.ctx, &copy.incoming, "settled").await;

    assert_eq!(settled.label, "succeeded");
    let subs = subscriptions_of(&bench);
    assert_eq!(subs.len(), 1, "{subs:?}");
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_eq!(stored.sub_id, subs[0]);
}

/// Stripe saved a 500 for the create's key and replays it to every retry: that replayed
/// answer, with a lookup showing nothing, is Stripe's word that nothing under the key made a
/// subscription, and the next key goes out at once.
#[tokio::test(start_paused = true)]
async fn a_500_stripe_replays_for_the_create_s_key_moves_to_the_next_key_and_makes_one_subscription()
 {
    let bench = bench();
    let job = job();
    if let Ok(mut faults) = bench.scripted.create_faults.lock() {
        faults.push_back(Fault::ServerErrorBefore);
    }

    let handled = handle(&bench.ctx, &first_delivery(&job), "first").await;

    assert_eq!(handled.label, "succeeded", "{handled:?}");
    assert_eq!(subscriptions_of(&bench).len(), 1);
    assert_eq!(recorded(&bench, &job).await.generation, 1, "the next key");
}

/// Past `give_up_after`, a job sends nothing; with a create sent an hour ago that a lookup
/// cannot find, only Stripe's 24 h key retention makes "absent" final. Until then it stays
/// `processing`; after it, it ends `STRIPE_UNAVAILABLE`.
#[tokio::test(start_paused = true)]
async fn a_given_up_job_with_a_recent_create_waits_for_stripe_s_key_retention_before_failing() {
    let bench = bench();
    let job = job();
    earlier_run(&bench, &job, 0, false).await;
    tokio::time::advance(GIVE_UP_AFTER).await;

    let waiting = handle(&bench.ctx, &first_delivery(&job), "late").await;

    assert_eq!(waiting.label, "parked");
    assert_eq!(bench.store.stored_result(&job.pay_key()), None);
    tokio::time::advance(Duration::from_secs(24 * 3600)).await;
    let parked = bench.queue.try_receive("test").expect("the parked copy");
    let ended = handle(&bench.ctx, &parked.incoming, "later").await;

    assert_eq!(ended.label, "failed");
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_eq!(
        stored.error.map(|e| e.code),
        Some(FailureCode::StripeUnavailable)
    );
    assert!(subscriptions_of(&bench).is_empty());
}

/// Runs a job the way the consumer does (`run_job`): in a task of its own, `after_panic` if
/// it panics.
async fn run_like_the_consumer(bench: &Bench, incoming: Incoming) -> Outcome {
    let task = {
        let (ctx, incoming) = (bench.ctx.clone(), incoming.clone());
        tokio::spawn(async move { handle(&ctx, &incoming, "panicky").await })
    };
    match task.await {
        Ok(handled) => handled,
        Err(error) => {
            assert!(error.is_panic());
            after_panic(&bench.ctx, &incoming, "panicky").await
        }
    }
}

/// Hole 5: a panic must not keep the payId locked, and ends the job with its own code.
#[tokio::test(start_paused = true)]
async fn a_job_that_panics_releases_its_lock_and_ends_internal_error() {
    let bench = bench();
    let job = job();
    bench
        .scripted
        .panic_on_customer
        .store(true, Ordering::SeqCst);

    let handled = run_like_the_consumer(&bench, first_delivery(&job)).await;
    // Long after any extension would have run.
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(handled.label, "failed");
    assert_eq!(handled.disposition, Disposition::Ack);
    assert!(
        bench.store.held_locks().is_empty(),
        "the lock is still held"
    );
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_eq!(
        stored.error.map(|e| e.code),
        Some(FailureCode::InternalError)
    );
    assert_eq!(bench.queue.dead_letters().len(), 1, "kept for a replay");
    assert_eq!(bench.queue.events().len(), 1, "announced");
}

/// A final failure outlives Redis: recorded at Stripe before it was stored, it is what a copy
/// finds once Redis has lost everything, and the copy announces the same `F` and creates
/// nothing (docs/design.md#a-final-failure-outlives-redis).
#[tokio::test(start_paused = true)]
async fn a_failure_redis_lost_is_announced_again_from_its_mark_at_stripe_never_made_a_subscription()
{
    let bench = bench();
    let job = job();
    bench
        .scripted
        .panic_on_customer
        .store(true, Ordering::SeqCst);
    let first = run_like_the_consumer(&bench, first_delivery(&job)).await;
    assert_eq!(first.label, "failed");
    bench
        .scripted
        .panic_on_customer
        .store(false, Ordering::SeqCst);
    bench.store.lose_everything();

    // The intake's copy (as after a claim's lease), on a store that has nothing of the payId.
    let again = run_like_the_consumer(&bench, first_delivery(&job)).await;

    assert_eq!(again.label, "failed");
    assert!(subscriptions_of(&bench).is_empty(), "an F became an S");
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_eq!(
        stored.error.map(|e| e.code),
        Some(FailureCode::InternalError)
    );
    let events = bench.queue.events();
    assert_eq!(events.len(), 2, "announced, then announced again");
    assert_eq!(
        events[0].1.id, events[1].1.id,
        "one event id for one outcome"
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_that_panics_after_recording_a_create_is_parked_not_failed() {
    let bench = bench();
    let job = job();
    bench.scripted.panic_on_create.store(true, Ordering::SeqCst);

    let handled = run_like_the_consumer(&bench, first_delivery(&job)).await;

    assert_eq!(handled.label, "parked");
    assert!(
        bench.store.held_locks().is_empty(),
        "the lock is still held"
    );
    assert_eq!(bench.store.stored_result(&job.pay_key()), None);
}

/// Hole 6: handed out up to the broker's delivery limit, the job still ends with a stored
/// result and an event (the broker would otherwise dead-letter it silently).
#[tokio::test(start_paused = true)]
async fn a_job_at_the_delivery_limit_ends_with_a_stored_result_and_an_event() {
    let bench = bench();
    let job = job();
    let worn = Incoming {
        redelivered: true,
        delivery_count: DELIVERY_LIMIT - 1,
        ..first_delivery(&job)
    };

    let handled = handle(&bench.ctx, &worn, "worn").await;

    assert_eq!(handled.label, "failed");
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_eq!(
        stored.error.map(|e| e.code),
        Some(FailureCode::InternalError)
    );
    let events = bench.queue.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1.id, "partner1:pay-1:failed");
    assert!(subscriptions_of(&bench).is_empty());
}

/// The broker's side of hole 6: past the limit a returned message moves to the expired-jobs
/// queue (at-least-once), which the workers consume, instead of vanishing.
#[tokio::test(start_paused = true)]
async fn a_message_handed_back_past_the_limit_is_delivered_from_the_expired_queue() {
    let bench = bench();
    let job = job();
    bench
        .queue
        .publish(QueuedJob::fresh(job.encode(), "pay-1", 1))
        .await
        .expect("published");

    let mut last = None;
    for _ in 0..=DELIVERY_LIMIT {
        let delivery = bench.queue.try_receive("w").expect("delivered again");
        bench.queue.nack(delivery.tag);
        last = Some(delivery.incoming);
    }
    let expired = bench
        .queue
        .try_receive("w")
        .expect("from the expired queue");

    assert_eq!(last.map(|l| l.delivery_count), Some(DELIVERY_LIMIT));
    assert!(expired.incoming.redelivered);
    assert!(expired.incoming.delivery_count + 1 >= DELIVERY_LIMIT);
    assert!(!bench.queue.is_idle());
}

/// Found by the simulation (seeds 2002766, 2009235): a job loses its lock (a failover drops
/// it) and a copy takes it; the first job's ending `failed` must not be stored, since the copy
/// may be creating the subscription.
#[tokio::test(start_paused = true)]
async fn a_job_that_lost_its_lock_does_not_store_its_failure() {
    let bench = bench();
    let job = job();
    bench
        .scripted
        .panic_on_customer
        .store(true, Ordering::SeqCst);
    let incoming = first_delivery(&job);
    let task = {
        let (ctx, incoming) = (bench.ctx.clone(), incoming.clone());
        tokio::spawn(async move { handle(&ctx, &incoming, "first").await })
    };
    assert!(task.await.is_err_and(|e| e.is_panic()));
    bench.store.drop_locks();
    let copy = bench
        .store
        .begin(&job.pay_key(), "copy", Duration::from_secs(3))
        .await;
    assert!(matches!(copy, Ok(JobStart::Locked { .. })), "{copy:?}");

    let handled = after_panic(&bench.ctx, &incoming, "first").await;

    assert_eq!(handled.label, "lock_lost");
    assert_eq!(handled.disposition, Disposition::Requeue);
    assert_eq!(bench.store.stored_result(&job.pay_key()), None);
    assert!(bench.queue.events().is_empty(), "nothing announced");
}

/// A refusal of an earlier step is not the end while an earlier create may still land at
/// Stripe: the job is parked, and a lookup decides once no request can be in flight.
#[tokio::test(start_paused = true)]
async fn a_refusal_while_an_earlier_create_may_still_land_parks_the_job_instead_of_failing_it() {
    let bench = bench();
    let mut fields = serde_json::to_value(job()).expect("a job as JSON");
    fields["pm_id"] = serde_json::json!("pm_card_chargeDeclined");
    let job: Job = serde_json::from_value(fields).expect("a valid job");
    // A create went out a moment ago, and its outcome is not known yet; its record is of the
    // older shape, without the method's id, so the customer steps run again before it is sent.
    let mut sent = earlier_run(&bench, &job, 0, false).await;
    sent.payment_method.clear();
    rerecord(&bench, &job, &sent).await;

    let refused = handle(&bench.ctx, &first_delivery(&job), "second").await;

    assert_eq!(refused.label, "parked", "{refused:?}");
    assert_eq!(
        bench.store.stored_result(&job.pay_key()),
        None,
        "still processing"
    );
    assert!(bench.queue.events().is_empty(), "no `failed` announced");
}

/// A customer of the job's person with `card` attached, as `/stripeSubAuthorization` and the
/// app's confirm of its SetupIntent leave it.
async fn authorized_customer(bench: &Bench, job: &Job, card: &str) -> String {
    let new = NewCustomer {
        partner_code: "partner1",
        email: job.email.as_str(),
        payment_method: card,
    };
    let customer = bench
        .stripe
        .create_customer(&new, "authorization-customer")
        .await
        .expect("a customer with the card attached")
        .id;
    bench
        .store
        .authorize(&job.pay_key(), job.email.as_str(), &customer);
    customer
}

/// docs/partners.md#before-the-request-stripesubauthorization: the authorization made the customer and the app's confirm put the card on
/// it, so the job skips the customer steps.
#[tokio::test(start_paused = true)]
async fn an_authorized_payid_whose_card_is_on_the_customer_makes_only_the_subscription() {
    let bench = bench();
    let job = job();
    let customer = authorized_customer(&bench, &job, "pm_1").await;
    let before = bench.stripe.counts().calls;

    let handled = handle(&bench.ctx, &first_delivery(&job), "first").await;

    assert_eq!(handled.label, "succeeded");
    assert_eq!(
        bench.stripe.counts().calls - before,
        2,
        "the configured price's product (once a process) and the subscription"
    );
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_eq!(stored.customer_id, customer);
    assert_eq!(stored.pay_method, "card");
    assert_eq!(subscriptions_of(&bench).len(), 1);
}

/// The app confirmed another card (or none): Stripe refuses the create, which made nothing,
/// and the job attaches the card and creates under the next key, at once.
#[tokio::test(start_paused = true)]
async fn an_authorized_payid_whose_card_is_not_on_the_customer_attaches_it_under_the_next_key() {
    let bench = bench();
    let job = job();
    let customer = authorized_customer(&bench, &job, "pm_other").await;

    let handled = handle(&bench.ctx, &first_delivery(&job), "first").await;

    assert_eq!(handled.label, "succeeded");
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_eq!(stored.customer_id, customer, "the authorization's customer");
    assert_eq!(subscriptions_of(&bench).len(), 1, "one subscription");
    let sent = bench
        .store
        .created(&job.pay_key())
        .await
        .expect("the store answers")
        .expect("a create was recorded");
    assert_eq!(sent.generation, 1, "the refused key is not used again");
}

/// Another email than the authorization's: the job takes the customer steps as any job.
#[tokio::test(start_paused = true)]
async fn an_authorization_for_another_email_is_not_used() {
    let bench = bench();
    let job = job();
    bench
        .store
        .authorize(&job.pay_key(), "someone-else@example.com", "cus_other");

    let handled = handle(&bench.ctx, &first_delivery(&job), "first").await;

    assert_eq!(handled.label, "succeeded");
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_ne!(stored.customer_id, "cus_other");
    assert_eq!(subscriptions_of(&bench).len(), 1);
}

/// Partial loss of Redis: a failover to a replica that missed the job's writes takes its stored
/// `F` back while the intake's record stays, so a copy finds the payId's records fresh. The
/// person has a customer now (the one carrying the failure's mark): the copy reads the mark
/// before anything is sent and answers the same `F` (docs/design.md, "Partial loss of Redis").
#[tokio::test(start_paused = true)]
async fn a_failure_a_failover_took_back_is_answered_again_from_its_mark_never_made_a_subscription()
{
    let bench = bench();
    let job = job();
    bench.store.keep_undo_log(Duration::from_secs(60));
    bench
        .scripted
        .panic_on_customer
        .store(true, Ordering::SeqCst);
    let first = run_like_the_consumer(&bench, first_delivery(&job)).await;
    assert_eq!(first.label, "failed");
    bench
        .scripted
        .panic_on_customer
        .store(false, Ordering::SeqCst);
    bench.store.lose_recent(Duration::from_secs(60));
    assert!(
        bench.store.stored_result(&job.pay_key()).is_none(),
        "the failover took the result back"
    );

    let again = run_like_the_consumer(&bench, first_delivery(&job)).await;

    assert_eq!(again.label, "failed");
    assert!(subscriptions_of(&bench).is_empty(), "an F became an S");
    let events = bench.queue.events();
    assert_eq!(events.len(), 2, "announced, then announced again");
    assert_eq!(events[0].1.id, events[1].1.id, "the same answer");
}

/// Partial loss of Redis the other way: the create record and the result of a payId that
/// succeeded are taken back, the intake's record stays. A copy whose attach is then refused
/// (the issuer declines this time) looks the subscription up before the refusal is final, and
/// ends with it: an `S` stays `S`.
#[tokio::test(start_paused = true)]
async fn a_subscription_a_failover_took_back_is_found_before_a_refused_attach_fails_the_job() {
    let bench = bench();
    let job = job();
    bench.store.keep_undo_log(Duration::from_secs(60));
    earlier_run(&bench, &job, 0, true).await;
    let made = subscriptions_of(&bench);
    bench.store.lose_recent(Duration::from_secs(60));
    bench.stripe.set_faults(crate::worker::memory::Faults {
        decline_rate: 1.0,
        ..crate::worker::memory::Faults::none(TIMEOUT)
    });

    let again = run_like_the_consumer(&bench, first_delivery(&job)).await;

    assert_eq!(again.label, "succeeded");
    assert_eq!(
        subscriptions_of(&bench),
        made,
        "one subscription, the first"
    );
    let stored = bench.store.stored_result(&job.pay_key()).expect("a result");
    assert_eq!(Some(&stored.sub_id), made.first());
}
