//! One schedule: the world (broker, Redis, Stripe, a clock), the actors (intake, workers,
//! `dlq replay`, the chaos), and what they did, drawn from one seed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autorenew::budget::SharedBudget;
use autorenew::config::PlanSettings;
use autorenew::domain::Job;
use autorenew::domain::cancel::{CANCEL_MESSAGE_TYPE, CancelJob, CancelWhen};
use autorenew::domain::webhook::STRIPE_EVENT_MESSAGE_TYPE;
use autorenew::store::ClaimOutcome;
use autorenew::worker::memory::{
    CreationClaim, Faults, MemoryQueue, MemoryStore, MemoryStripe, Pauses, QueueDelays, QueuedJob,
    Trace, VirtualClock,
};
use autorenew::worker::message::{Message, after_panic, handle};
use autorenew::worker::ports::{Clock, Disposition};
use autorenew::worker::{JobContext, JobPorts, JobSettings, RetryPolicy, lane_prefetch};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::checks;

/// The client's timeout to Stripe (`stripe.request_timeout_ms`).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
const LOCK_TTL: Duration = Duration::from_secs(3);
/// `worker.give_up_after`: within the settle cap, so an outage that outlasts it ends jobs
/// `STRIPE_UNAVAILABLE`, and the replay a day later meets jobs past it.
const GIVE_UP_AFTER: Duration = Duration::from_secs(2 * 3600);
/// Low, so that crashes and hand-backs reach it.
const DELIVERY_LIMIT: u32 = 4;
/// How long, after the chaos, the world may take to settle.
const SETTLE_CAP: Duration = Duration::from_secs(6 * 3600);
const PRICE: &str = "price_basic";
/// The share of schedules whose card checks sometimes decline, and the most they decline.
const DECLINING_SCHEDULES: f64 = 0.5;
const MAX_DECLINE_RATE: f64 = 0.5;
/// Mixed into the seed for the decline draws.
const DECLINE_SEED: u64 = 0x0DEC_11E5;
/// Mixed into the seed for the cancel draws: a source of their own, so every other draw of a
/// schedule stays what it was before cancels were simulated.
const CANCEL_SEED: u64 = 0x0CA1_CE15;
/// The share of payIds a partner cancels, and the most cancels one payId gets.
const CANCELED_SHARE: f64 = 0.4;
const MAX_CANCELS: usize = 2;
/// Mixed into the seed for the webhook courier's draws: how late each event comes, and whether
/// it comes twice.
const EVENTS_SEED: u64 = 0x0E7E_2775;
const MAX_EVENT_DELAY_MS: u64 = 20_000;
const TWICE_SHARE: f64 = 0.3;
/// Mixed into the seed for the data-loss draw (the share of schedules whose Redis loses
/// everything once is `SIM_DATA_LOSS`, default [`DATA_LOSS_SHARE`]).
const LOSS_SEED: u64 = 0x1055_DA7A;
/// Mixed into the seed for the workers' clock skews; the most one is off (either way). The share
/// of schedules whose workers' clocks disagree is `SIM_CLOCK_SKEW`, default
/// [`CLOCK_SKEW_SHARE`].
const SKEW_SEED: u64 = 0x05CE_3C10;
const MAX_SKEW_MS: i64 = 5 * 60 * 1000;
/// The share of schedules whose workers' clocks are off, unless `SIM_CLOCK_SKEW` says otherwise
/// (a cancel's state is versioned on Stripe's clock, not the worker's; docs/design.md, "Faults
/// simulated").
const CLOCK_SKEW_SHARE: f64 = 0.5;

/// The share of schedules whose Redis loses everything once, unless `SIM_DATA_LOSS` says
/// otherwise (a final failure is recorded at Stripe, so a copy that finds Redis emptied announces
/// it again; docs/design.md, "A final failure outlives Redis").
const DATA_LOSS_SHARE: f64 = 0.15;
/// Mixed into the seed for the partial-loss draws: whether Redis fails over to a replica that
/// missed its last writes, when, how much it missed, keys evicted early, and which payIds their
/// partners then send again. A source of its own, so every other draw of a schedule stays what it
/// was before partial loss was simulated.
const PARTIAL_SEED: u64 = 0x9A27_1A15;
/// The share of schedules with a partial loss, unless `SIM_PARTIAL_LOSS` says otherwise.
const PARTIAL_LOSS_SHARE: f64 = 0.15;
/// How much a lagging replica may have missed: the window of writes undone (ms).
const PARTIAL_WINDOW_MS: std::ops::Range<u64> = 50..2_000;
/// Of those schedules, the share where keys with an expiry also go early (1 or 2 of them).
const EVICTING_SHARE: f64 = 0.5;
/// The share of accepted payIds whose partner sends the request again after the loss, and how
/// long after it the retry may come (ms).
const RETRIED_SHARE: f64 = 0.5;
const RETRY_AFTER_MS: u64 = 15_000;
/// The intake's claim lease: twice `intake.publish_timeout_ms`.
const CLAIM_LEASE: Duration = Duration::from_millis(3_000);

/// Mixed into the seed for the broker's faults while up; the share of schedules that have them
/// and the most of a schedule's worker publishes they hit.
const PUBLISH_FAULT_SEED: u64 = 0x0B0C_FA17;
const PUBLISH_FAULT_SCHEDULES: f64 = 0.5;
const MAX_PUBLISH_FAULT_RATE: f64 = 0.2;
/// Mixed into the seed for the partners' draws: how many partners, whose each job is, which one
/// floods and when, whether one is unknown to the workers, and the broker's interleaving of
/// lanes.
const LANES_SEED: u64 = 0x1A7E_5EED;
/// The most partners a schedule has.
const MAX_PARTNERS: usize = 4;
/// The share of schedules where one partner floods, and the size of its burst (all published at
/// one moment, on top of the schedule's jobs).
const FLOOD_SCHEDULES: f64 = 0.4;
const FLOOD_JOBS: std::ops::RangeInclusive<usize> = 8..=24;
/// The share of schedules with two partners or more where the last one has no lane (not in the
/// workers' configuration yet): its jobs travel in the shared queue.
const UNKNOWN_PARTNER_SCHEDULES: f64 = 0.2;

/// Mixed into the seed for the pause draws: the share of schedules whose workers pause (a
/// stop-the-world collection, a throttled VM), how likely a call of theirs starts a pause, and
/// how long one lasts: from half the lock's TTL to three times it, so most outlive the lock.
const PAUSE_SEED: u64 = 0x0A05_E5ED;
const PAUSE_SCHEDULES: f64 = 0.3;
const MAX_PAUSE_RATE: f64 = 0.03;
/// The chance that a job's last steps (storing its result, marking a failure at Stripe) start
/// a pause, in those schedules.
const HOT_PAUSE_RATE: f64 = 0.3;
/// Mixed into the seed for the budget draws: the share of schedules whose Stripe calls wait
/// for the shared budget (the real gate, `budget::SharedBudget`, asking the real turn script on
/// the twin's keyspace), and its rate, low enough that calls queue for it.
const BUDGET_SEED: u64 = 0x0B0D_6E75;
const BUDGET_SCHEDULES: f64 = 0.3;
const BUDGET_RATES: std::ops::RangeInclusive<u32> = 5..=25;

/// Mixed into the seed for the search-lag draw: the share of schedules whose Stripe search
/// shows a new subscription only after a lag, and the longest lag (Stripe: up to a minute).
const SEARCH_LAG_SEED: u64 = 0x05EA_4C11;
const SEARCH_LAG_SCHEDULES: f64 = 0.3;
const MAX_SEARCH_LAG_MS: u64 = 60_000;

/// Mixed into the seed for the reconcile draws: the share of schedules whose webhook intake
/// misses deliveries (down longer than Stripe retries one), the most it misses, and the
/// `autorenew reconcile` runs that feed them again.
const RECONCILE_SEED: u64 = 0x2EC0_9C11;
const RECONCILE_SCHEDULES: f64 = 0.3;
const MAX_MISSED_SHARE: f64 = 0.6;

/// What a schedule did and what it broke.
pub struct Report {
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    pub summary: String,
}

pub fn run(seed: u64) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(schedule(seed))
}

/// The shared systems of one schedule.
#[derive(Clone)]
pub struct World {
    pub queue: MemoryQueue,
    pub store: MemoryStore,
    pub stripe: MemoryStripe,
    pub clock: VirtualClock,
    pub trace: Trace,
    /// Which worker processes are paused, and the draws that pause them.
    pub pauses: Pauses,
    /// The Stripe budget every worker's calls wait for, per second, in schedules that have one.
    pub budget: Option<u32>,
    /// The tokens of jobs that panicked: a cancel's lock is left to expire by its TTL.
    pub panicked: Arc<Mutex<BTreeSet<String>>>,
}

/// What the chaos does, and when (from the start of the schedule).
#[derive(Debug, Clone)]
enum Chaos {
    Crash(usize),
    RedisAway(Duration),
    LoseStoreAnswers(u32),
    DropLocks,
    /// Redis loses every key (drawn from a source of its own).
    LoseEverything,
    /// Redis fails over to a replica that missed the writes of this last window: each key goes
    /// back to what it was before them (drawn from a source of its own).
    LoseRecent(Duration),
    /// One key with an expiry goes early, the n-th of them (drawn with [`Chaos::LoseRecent`]).
    Evict(u64),
    BrokerAway(Duration),
    StripeOutage(Duration),
    Replay,
    /// `autorenew reconcile`: Stripe's events fed again through the webhook's path.
    Reconcile,
}

/// A simulated worker process: its incarnations come and go with the crashes.
#[derive(Default)]
struct Process {
    name: String,
    /// How far this process's clock is off (its host's clock, whatever its incarnation).
    skew_ms: i64,
    alive: bool,
    tasks: Vec<AbortHandle>,
    running: BTreeSet<String>,
}

/// The actors' shared books.
#[derive(Default)]
pub struct Books {
    /// payIds the intake acknowledged.
    pub accepted: BTreeSet<String>,
    /// Cancels the intake acknowledged: (payId, when).
    pub cancels: Vec<(String, CancelWhen)>,
    /// Lock tokens of jobs that died with their worker (their locks expire by TTL).
    pub crashed_tokens: BTreeSet<String>,
    pub crashes: u32,
    pub replays: u32,
    pub reconciles: u32,
    /// The Stripe events the webhook intake took (its claim records them as taken).
    pub events_taken: BTreeSet<String>,
    /// Redis lost everything at some point: a result may be gone, and is rebuilt from Stripe
    /// when a query or a cancel needs it.
    pub data_lost: bool,
    /// payIds some of whose keys a partial loss (a failover to a lagging replica, an eviction)
    /// took back or away: as after a loss of everything, for those payIds only.
    pub partly_lost: BTreeSet<String>,
    /// The partner of every message published for one (by message id): a creation's payId, a
    /// cancel's id. A Stripe event has none.
    pub partner_of: BTreeMap<String, String>,
    /// The partners the workers have a lane for.
    pub lanes: BTreeSet<String>,
}

impl Books {
    /// Whether Redis may have lost what it held of `pay_id`: everything was lost, or a partial
    /// loss took some of its keys back.
    pub fn lost(&self, pay_id: &str) -> bool {
        self.data_lost || self.partly_lost.contains(pay_id)
    }
}

/// The partners of a schedule, from draws of their own.
struct Partners {
    /// Every partner that sends jobs.
    codes: Vec<String>,
    /// Those with a lane (all but, in some schedules, the last).
    lanes: Vec<String>,
    /// The flooding partner, its burst's size and moment.
    flood: Option<(String, usize, Duration)>,
    rng: fastrand::Rng,
}

impl Partners {
    fn draw(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ LANES_SEED);
        let count = rng.usize(1..=MAX_PARTNERS);
        let codes: Vec<String> = (1..=count).map(|n| format!("partner{n}")).collect();
        let mut lanes = codes.clone();
        if count > 1 && rng.f64() < UNKNOWN_PARTNER_SCHEDULES {
            lanes.pop();
        }
        let flood = (rng.f64() < FLOOD_SCHEDULES).then(|| {
            let who = codes[rng.usize(..count)].clone();
            let size = rng.usize(FLOOD_JOBS);
            (who, size, Duration::from_millis(rng.u64(..3_000)))
        });
        Partners {
            codes,
            lanes,
            flood,
            rng,
        }
    }

    /// The partner of the schedule's next job.
    fn next(&mut self) -> String {
        self.codes[self.rng.usize(..self.codes.len())].clone()
    }
}

async fn schedule(seed: u64) -> Report {
    let trace = Trace::recording();
    let mut rng = fastrand::Rng::with_seed(seed);
    let delays = QueueDelays {
        retry: vec![
            Duration::from_secs(1),
            Duration::from_secs(4),
            Duration::from_secs(10),
        ],
        // 5 ms to 500 ms, log-uniform: a copy that polls the lock often meets the moments
        // between two calls of the job that holds it.
        lock: Duration::from_micros((5_000.0 * 100_f64.powf(rng.f64())) as u64),
        reconcile: Duration::from_secs(15),
    };
    let mut partners = Partners::draw(seed);
    let pauses = Pauses::new(trace.clone());
    let world = World {
        queue: MemoryQueue::new(delays, DELIVERY_LIMIT, trace.clone())
            .with_lanes(&partners.lanes)
            .pausing(&pauses),
        // Redis is sometimes slow: wider windows between two calls of one job.
        store: MemoryStore::new(
            rng.u64(..),
            Duration::from_millis(rng.u64(1..=40)),
            trace.clone(),
        )
        .pausing(&pauses),
        stripe: MemoryStripe::new(rng.u64(..), CLIENT_TIMEOUT, trace.clone()).pausing(&pauses),
        clock: VirtualClock::new(1_800_000_000_000),
        trace: trace.clone(),
        pauses,
        budget: draw_budget(seed),
        panicked: Arc::default(),
    };
    world.stripe.add_price(PRICE, "prod_basic");
    let search_lag = draw_search_lag(seed);
    if let Some(lag) = search_lag {
        world.stripe.set_search_lag(lag);
    }
    world.queue.set_interleave(partners.rng.u64(..));
    {
        // The delayed queues' TTLs run whoever waits, as the broker's do.
        let queue = world.queue.clone();
        tokio::spawn(async move { queue.run_timers().await });
    }
    {
        // Nacks and lost confirms while the broker is up, from draws of their own.
        let mut draws = fastrand::Rng::with_seed(seed ^ PUBLISH_FAULT_SEED);
        if draws.f64() < PUBLISH_FAULT_SCHEDULES {
            let rate = draws.f64() * MAX_PUBLISH_FAULT_RATE;
            world.queue.set_publish_faults(draws.u64(..), rate);
        }
    }
    if rng.f64() < 0.5 {
        // Latency spikes: a job's two calls to Redis may lie far apart.
        world.store.set_stall_rate(0.05);
    }

    // The schedule's shape.
    let job_count = rng.usize(2..=8);
    let workers = rng.usize(1..=3);
    draw_pauses(seed, &world, workers);
    let concurrency = rng.usize(1..=3);
    let chaos_window = Duration::from_secs(rng.u64(10..=40));
    let faults = Faults {
        rate: rng.f64() * 0.5,
        outage: false,
        panic_rate: if rng.f64() < 0.3 { 0.02 } else { 0.0 },
        decline_rate: decline_rate(seed),
        client_timeout: CLIENT_TIMEOUT,
    };
    world.stripe.set_faults(faults.clone());
    let jobs: Vec<Job> = (0..job_count)
        .map(|n| {
            let declined = rng.f64() < 0.1;
            sample_job(n, rng.usize(..job_count), declined, &partners.next())
        })
        .collect();
    let mut timeline: Vec<(Duration, Chaos)> = Vec::new();
    let at =
        |rng: &mut fastrand::Rng| Duration::from_millis(rng.u64(..chaos_window.as_millis() as u64));
    for _ in 0..rng.usize(0..=6) {
        timeline.push((at(&mut rng), Chaos::Crash(rng.usize(..workers))));
    }
    for _ in 0..rng.usize(0..=2) {
        let away = Duration::from_millis(rng.u64(100..4_000));
        timeline.push((at(&mut rng), Chaos::RedisAway(away)));
    }
    for _ in 0..rng.usize(0..=2) {
        timeline.push((at(&mut rng), Chaos::LoseStoreAnswers(rng.u32(1..=3))));
    }
    if rng.f64() < 0.3 {
        timeline.push((at(&mut rng), Chaos::DropLocks));
    }
    for _ in 0..rng.usize(0..=2) {
        let away = Duration::from_millis(rng.u64(100..3_000));
        timeline.push((at(&mut rng), Chaos::BrokerAway(away)));
    }
    for _ in 0..rng.usize(0..=2) {
        let down = Duration::from_millis(rng.u64(1_000..15_000));
        timeline.push((at(&mut rng), Chaos::StripeOutage(down)));
    }
    for _ in 0..rng.usize(0..=3) {
        timeline.push((at(&mut rng), Chaos::Replay));
    }
    {
        // Draws of their own, so every other draw of a schedule stays what it was.
        let mut loss = fastrand::Rng::with_seed(seed ^ LOSS_SEED);
        if loss.f64() < share("SIM_DATA_LOSS", DATA_LOSS_SHARE) {
            let when = Duration::from_millis(loss.u64(..chaos_window.as_millis() as u64));
            timeline.push((when, Chaos::LoseEverything));
        }
    }
    let partial = PartialLoss::draw(seed, chaos_window);
    if let Some(partial) = &partial {
        timeline.extend(partial.chaos.iter().cloned());
        world
            .store
            .keep_undo_log(Duration::from_millis(PARTIAL_WINDOW_MS.end));
    }
    let missed_share = {
        // Draws of their own: the webhook intake misses a share of Stripe's deliveries, and
        // reconcile runs feed them again, once or twice in the window and once after it.
        let mut draws = fastrand::Rng::with_seed(seed ^ RECONCILE_SEED);
        if draws.f64() < share("SIM_RECONCILE", RECONCILE_SCHEDULES) {
            for _ in 0..draws.usize(1..=2) {
                let when = Duration::from_millis(draws.u64(..chaos_window.as_millis() as u64));
                timeline.push((when, Chaos::Reconcile));
            }
            Some(draws.f64() * MAX_MISSED_SHARE)
        } else {
            None
        }
    };
    timeline.sort_by_key(|(when, _)| *when);
    let late_replay = rng.f64() < 0.2;

    let books = Arc::new(Mutex::new(Books {
        lanes: partners.lanes.iter().cloned().collect(),
        ..Books::default()
    }));
    {
        let mut books = lock(&books);
        for job in &jobs {
            books
                .partner_of
                .insert(job.pay_id.to_string(), job.partner_code.to_string());
        }
    }
    // Each worker's clock is off by its own amount in some schedules, from draws of their own:
    // the records one writes (a create's send time) are read by another.
    let mut skews = fastrand::Rng::with_seed(seed ^ SKEW_SEED);
    let skewed = skews.f64() < share("SIM_CLOCK_SKEW", CLOCK_SKEW_SHARE);
    let processes: Vec<Arc<Mutex<Process>>> = (0..workers)
        .map(|_| {
            let skew_ms = if skewed {
                skews.i64(-MAX_SKEW_MS..=MAX_SKEW_MS)
            } else {
                0
            };
            Arc::new(Mutex::new(Process {
                skew_ms,
                ..Process::default()
            }))
        })
        .collect();
    let publishing = Arc::new(AtomicUsize::new(0));

    // The intake: each job accepted once its publish is confirmed (the partner retries a 503),
    // and sometimes published again.
    for job in &jobs {
        let first = Duration::from_millis(rng.u64(..3_000));
        // Up to three more copies, as after claims' leases: each one races the first copy,
        // and bounces through the lock-retry queue while it holds the lock.
        let copies: Vec<Duration> = (0..rng.usize(0..=3))
            .map(|_| Duration::from_millis(rng.u64(..20_000)))
            .collect();
        publishing.fetch_add(1, Ordering::SeqCst);
        let (world, books, publishing) = (world.clone(), books.clone(), publishing.clone());
        let job = job.clone();
        tokio::spawn(async move {
            tokio::time::sleep(first).await;
            accept(&world, &books, &job).await;
            let pay_id = job.pay_id.to_string();
            for again in copies {
                tokio::time::sleep(again).await;
                world.trace.note("intake", || format!("republish {pay_id}"));
                intake_publish(&world, &job).await;
            }
            publishing.fetch_sub(1, Ordering::SeqCst);
        });
    }
    if let Some((partner, size, at)) = partners.flood.clone() {
        flood(&world, &books, &publishing, &partner, size, at);
    }
    schedule_cancels(seed, &jobs, &world, &books, &publishing);
    if let Some(partial) = &partial {
        partial.schedule_retries(&jobs, &world, &books, &publishing);
    }
    tokio::spawn(courier(
        seed,
        world.clone(),
        books.clone(),
        publishing.clone(),
        missed_share.unwrap_or(0.0),
    ));
    for (index, process) in processes.iter().enumerate() {
        start(&world, process, index, 0, concurrency);
    }

    // The chaos, in order.
    let started = Instant::now();
    let over = Arc::new(AtomicBool::new(false));
    let mut incarnations = vec![0_u32; workers];
    for (when, chaos) in timeline.clone() {
        tokio::time::sleep_until(started + when).await;
        world.trace.note("chaos", || format!("{chaos:?}"));
        match chaos {
            Chaos::Crash(index) => {
                if !crash(&world, &processes[index], &books) {
                    continue;
                }
                incarnations[index] += 1;
                let (world, process) = (world.clone(), processes[index].clone());
                let restart = Duration::from_millis(rng.u64(200..3_000));
                let incarnation = incarnations[index];
                tokio::spawn(async move {
                    tokio::time::sleep(restart).await;
                    if !lock(&process).alive {
                        start(&world, &process, index, incarnation, concurrency);
                    }
                });
            }
            Chaos::RedisAway(away) => {
                world.store.set_away(true);
                let store = world.store.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(away).await;
                    store.set_away(false);
                });
            }
            Chaos::LoseStoreAnswers(calls) => world.store.lose_answers(calls),
            Chaos::DropLocks => world.store.drop_locks(),
            Chaos::LoseEverything => {
                world.store.lose_everything();
                lock(&books).data_lost = true;
            }
            Chaos::LoseRecent(window) => {
                let lost = world.store.lose_recent(window);
                lock(&books)
                    .partly_lost
                    .extend(lost.iter().map(|key| pay_id_of(key)));
            }
            Chaos::Evict(pick) => {
                if let Some(key) = world.store.evict_one(pick) {
                    lock(&books).partly_lost.insert(pay_id_of(&key));
                }
            }
            Chaos::BrokerAway(away) => {
                world.queue.set_down(true);
                let queue = world.queue.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(away).await;
                    queue.set_down(false);
                });
            }
            Chaos::StripeOutage(down) => {
                world.stripe.set_faults(Faults {
                    outage: true,
                    ..faults.clone()
                });
                let (stripe, faults, over) = (world.stripe.clone(), faults.clone(), over.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(down).await;
                    // Once the chaos is over Stripe stays healthy.
                    if !over.load(Ordering::SeqCst) {
                        stripe.set_faults(faults);
                    }
                });
            }
            Chaos::Replay => replay(&world, &books).await,
            Chaos::Reconcile => reconcile(&world, &books).await,
        }
    }
    tokio::time::sleep_until(started + chaos_window).await;

    // Stripe recovers, every outage ends; what is left must settle.
    world.trace.note("chaos", || "over: every fault off".into());
    over.store(true, Ordering::SeqCst);
    world.stripe.set_faults(Faults::none(CLIENT_TIMEOUT));
    world.store.set_away(false);
    world.queue.set_down(false);
    world.queue.set_publish_faults(0, 0.0);
    world.pauses.stop_drawing();
    // A crashed worker that had not come back yet does now.
    for (index, process) in processes.iter().enumerate() {
        if !lock(process).alive {
            incarnations[index] += 1;
            start(&world, process, index, incarnations[index], concurrency);
        }
    }
    if missed_share.is_some() {
        // The operator's run after the incident: what the intake missed is fed again.
        world
            .trace
            .note("chaos", || "Reconcile (after the incident)".into());
        reconcile(&world, &books).await;
    }
    let mut violations = Vec::new();
    let settled = settle(&world, &processes, &publishing).await;
    if settled {
        // Before the last replay, which revives dead letters and could hide what came before
        // it: a broken invariant counts unless a dead letter of that payId explains it (a job
        // failed for good, or a cancel whose Stripe calls kept failing, waits for an operator
        // by design).
        let dead: BTreeSet<String> = world
            .queue
            .dead_letters()
            .iter()
            .map(|(letter, _)| letter.message_id.clone())
            .collect();
        for violation in checks::invariants(&world, &lock(&books)) {
            let pay_id = violation.split(':').next().unwrap_or_default();
            let explained = dead.iter().any(|id| {
                id == pay_id
                    || id.ends_with(&format!(":{pay_id}:now"))
                    || id.ends_with(&format!(":{pay_id}:period_end"))
            });
            if !explained {
                violations.push(format!("before the last replay: {violation}"));
            }
        }
        for (letter, reason) in world.queue.dead_letters() {
            if reason.starts_with("unparseable") || reason.starts_with("not a Stripe event") {
                violations.push(format!(
                    "{}: dead-lettered as poison ({reason}), which no message here is",
                    letter.message_id
                ));
            }
        }
        if late_replay {
            // An operator replays the dead letters a day later: Stripe has forgotten the keys.
            tokio::time::sleep(Duration::from_secs(25 * 3600)).await;
        }
        replay(&world, &books).await;
        if !settle(&world, &processes, &publishing).await {
            violations.push("the world did not settle after the last replay".into());
        }
    } else {
        violations.push(format!(
            "the world did not settle within {SETTLE_CAP:?} of the chaos"
        ));
    }
    let books = lock(&books);
    violations.extend(checks::invariants(&world, &books));
    violations.extend(checks::served_in_turn(&world.queue.lane_log(), &books));
    if let Some(per_second) = world.budget {
        violations.extend(checks::within_budget(
            &world.stripe.budgeted_sends(),
            per_second,
            books.data_lost,
        ));
    }
    let counts = world.stripe.counts();
    let flood = match &partners.flood {
        Some((who, size, _)) => format!(", {who} floods {size}"),
        None => String::new(),
    };
    let mut budget = match world.budget {
        Some(per_second) => format!(", budget {per_second}/s"),
        None => String::new(),
    };
    if let Some(lag) = search_lag {
        budget.push_str(&format!(", search lag {:.1} s", lag.as_secs_f64()));
    }
    let summary = format!(
        "{job_count} jobs, {} partners ({} with a lane{flood}), {workers} workers x \
         {concurrency}, fault rate {:.2}, decline rate {:.2}, {} Stripe calls ({} faults, {} \
         panics{budget}), {} crashes, {} pauses, {} replays, {} reconciles",
        partners.codes.len(),
        partners.lanes.len(),
        faults.rate,
        faults.decline_rate,
        counts.calls,
        counts.faults,
        counts.panics,
        books.crashes,
        world.pauses.count(),
        books.replays,
        books.reconciles
    );
    Report {
        violations,
        trace: trace.lines(),
        summary,
    }
}

/// In some schedules (from draws of their own), every worker's calls may start a pause of the
/// whole process, so that its locks expire under it while it still believes it holds them.
fn draw_pauses(seed: u64, world: &World, workers: usize) {
    let mut draws = fastrand::Rng::with_seed(seed ^ PAUSE_SEED);
    if draws.f64() >= share("SIM_PAUSES", PAUSE_SCHEDULES) {
        return;
    }
    let rate = draws.f64() * MAX_PAUSE_RATE;
    let who = (0..workers).map(|index| format!("w{index}.")).collect();
    world.pauses.set_prone(
        draws.u64(..),
        who,
        rate,
        &[("finish", HOT_PAUSE_RATE), ("mark", HOT_PAUSE_RATE)],
        LOCK_TTL / 2..LOCK_TTL * 3,
    );
}

/// How long Stripe's search lags a new subscription, in the schedules where it does (from
/// draws of their own).
fn draw_search_lag(seed: u64) -> Option<Duration> {
    let mut draws = fastrand::Rng::with_seed(seed ^ SEARCH_LAG_SEED);
    (draws.f64() < share("SIM_SEARCH_LAG", SEARCH_LAG_SCHEDULES))
        .then(|| Duration::from_millis(draws.u64(1_000..=MAX_SEARCH_LAG_MS)))
}

/// The budget's rate in the schedules that have one (from draws of their own).
fn draw_budget(seed: u64) -> Option<u32> {
    let mut draws = fastrand::Rng::with_seed(seed ^ BUDGET_SEED);
    (draws.f64() < share("SIM_BUDGET", BUDGET_SCHEDULES)).then(|| draws.u32(BUDGET_RATES))
}

/// A share of schedules: `variable` if it is set to a number, else `default`.
fn share(variable: &str, default: f64) -> f64 {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The share of card checks the issuer declines: in some schedules only, drawn from a source of
/// its own so that every other draw of the schedule stays what it was before declines existed.
fn decline_rate(seed: u64) -> f64 {
    let mut rng = fastrand::Rng::with_seed(seed ^ DECLINE_SEED);
    if rng.f64() < DECLINING_SCHEDULES {
        rng.f64() * MAX_DECLINE_RATE
    } else {
        0.0
    }
}

fn sample_job(n: usize, person: usize, declined: bool, partner: &str) -> Job {
    let pm = if declined {
        format!("pm_chargeDeclined_{n}")
    } else {
        format!("pm_{n}")
    };
    let email = format!("person{person}@example.com");
    job(&format!("pay-{n}"), &email, &pm, partner)
}

fn job(pay_id: &str, email: &str, pm: &str, partner: &str) -> Job {
    let json = serde_json::json!({
        "payId": pay_id,
        "partnerCode": partner,
        "email": email,
        "plan_id": "basic",
        "pm_id": pm,
        "payAmount": "9.99",
        "amountMinor": 999,
        "payCurrency": "usd",
        "tradeType": "subscription",
        "acceptedAt": "2027-01-15T08:00:00Z",
        "requestId": format!("req-{pay_id}"),
    });
    serde_json::from_value(json).expect("a valid job")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The intake takes a creation: its claim keeps the payId's record, then it publishes until
/// the broker confirms (the partner retries a 503), marks the record enqueued, and the request
/// is accepted.
async fn accept(world: &World, books: &Mutex<Books>, job: &Job) {
    let pay_key = job.pay_key();
    let body = String::from_utf8_lossy(&job.encode()).into_owned();
    let claimed = world
        .store
        .claim_creation(&creation_claim(job, "first", &body));
    if !matches!(claimed, Ok(ClaimOutcome::Claimed { .. })) {
        world
            .trace
            .note("intake", || format!("claim {pay_key}: {claimed:?}"));
    }
    intake_publish(world, job).await;
    if let Err(error) = world.store.mark_creation_enqueued(&pay_key) {
        world
            .trace
            .note("intake", || format!("mark {pay_key}: {error}"));
    }
    lock(books).accepted.insert(job.pay_id.to_string());
}

/// The arguments of the intake's claim of `job`'s creation, for the request `request`.
fn creation_claim<'a>(job: &'a Job, request: &'a str, body: &'a str) -> CreationClaim<'a> {
    CreationClaim {
        pay_key: job.pay_key(),
        token: request,
        // Every field but the sign and `tradeTime`: the same for the partner's retries.
        fingerprint: job.pm_id.as_str(),
        accepted_at: job.accepted_at.as_str(),
        job: body,
        lease: CLAIM_LEASE,
    }
}

/// The payId of a store key's hash tag (`partner1:pay-1` → `pay-1`).
fn pay_id_of(tag: &str) -> String {
    tag.split_once(':')
        .map_or(tag, |(_, pay_id)| pay_id)
        .to_owned()
}

/// A failover to a replica that missed the last writes, from draws of their own: its moment
/// and window, keys evicted early, and the partners' retries that follow.
struct PartialLoss {
    chaos: Vec<(Duration, Chaos)>,
    /// When the failover happens.
    at: Duration,
    rng: fastrand::Rng,
}

impl PartialLoss {
    fn draw(seed: u64, chaos_window: Duration) -> Option<Self> {
        let mut rng = fastrand::Rng::with_seed(seed ^ PARTIAL_SEED);
        if rng.f64() >= share("SIM_PARTIAL_LOSS", PARTIAL_LOSS_SHARE) {
            return None;
        }
        let span = u64::try_from(chaos_window.as_millis()).unwrap_or(u64::MAX);
        let at = Duration::from_millis(rng.u64(..span));
        let window = Duration::from_millis(rng.u64(PARTIAL_WINDOW_MS));
        let mut chaos = vec![(at, Chaos::LoseRecent(window))];
        if rng.f64() < EVICTING_SHARE {
            for _ in 0..rng.usize(1..=2) {
                chaos.push((
                    Duration::from_millis(rng.u64(..span)),
                    Chaos::Evict(rng.u64(..)),
                ));
            }
        }
        Some(PartialLoss { chaos, at, rng })
    }

    /// The partners send some accepted requests again after the failover (a partner that
    /// lost its answer, or checks by sending again): the intake takes each as it takes any
    /// request (`intake::subscribe`): a record still there answers as before and publishes
    /// nothing; a record gone is claimed afresh and the job published again; a pending one
    /// waits for its holder.
    fn schedule_retries(
        &self,
        jobs: &[Job],
        world: &World,
        books: &Arc<Mutex<Books>>,
        publishing: &Arc<AtomicUsize>,
    ) {
        let mut rng = self.rng.clone();
        for job in jobs {
            if rng.f64() >= RETRIED_SHARE {
                continue;
            }
            let after = self.at + Duration::from_millis(rng.u64(..RETRY_AFTER_MS));
            let (world, books, publishing) = (world.clone(), books.clone(), publishing.clone());
            let job = job.clone();
            publishing.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let pay_id = job.pay_id.to_string();
                while !lock(&books).accepted.contains(&pay_id) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                retry(&world, &job).await;
                publishing.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}

/// The partner's retry of an accepted creation, as `intake::enqueue` takes it.
async fn retry(world: &World, job: &Job) {
    let pay_key = job.pay_key();
    let body = String::from_utf8_lossy(&job.encode()).into_owned();
    loop {
        let claimed = world
            .store
            .claim_creation(&creation_claim(job, "retry", &body));
        world.trace.note("intake", || {
            format!("partner retries {pay_key}: {}", claim_answer(&claimed))
        });
        match claimed {
            Ok(ClaimOutcome::Claimed { .. }) => {
                intake_publish(world, job).await;
                if let Err(error) = world.store.mark_creation_enqueued(&pay_key) {
                    world
                        .trace
                        .note("intake", || format!("mark {pay_key}: {error}"));
                }
                return;
            }
            // Another request is between Redis and the broker: the intake waits for it, and
            // past its deadline answers 503; the partner sends again a moment later.
            Ok(ClaimOutcome::Pending) => tokio::time::sleep(Duration::from_secs(1)).await,
            // Answered as the first time (the result if there is one), nothing published; or
            // refused (not for a request of the same content).
            Ok(ClaimOutcome::Enqueued { .. } | ClaimOutcome::Conflict) | Err(_) => return,
        }
    }
}

fn claim_answer(claimed: &Result<ClaimOutcome, autorenew::store::StoreError>) -> String {
    match claimed {
        Ok(ClaimOutcome::Claimed { .. }) => "claimed afresh, the job published again".into(),
        Ok(ClaimOutcome::Enqueued {
            result: Some(result),
        }) => {
            format!("taken before, answered {}", result.status)
        }
        Ok(ClaimOutcome::Enqueued { result: None }) => "taken before, answered processing".into(),
        Ok(ClaimOutcome::Pending) => "pending".into(),
        Ok(ClaimOutcome::Conflict) => "conflict".into(),
        Err(error) => format!("error: {error}"),
    }
}

/// Publishes a creation into its partner's lane until the broker confirms.
async fn intake_publish(world: &World, job: &Job) {
    let message = QueuedJob::fresh(job.encode(), job.pay_id.as_str(), 1)
        .for_partner(job.partner_code.as_str());
    publish_until_confirmed(world, message).await;
}

/// One partner's burst: `size` creations taken by the intake at one moment, so that its lane
/// holds a backlog while the other partners' jobs come.
fn flood(
    world: &World,
    books: &Arc<Mutex<Books>>,
    publishing: &Arc<AtomicUsize>,
    partner: &str,
    size: usize,
    at: Duration,
) {
    let jobs: Vec<Job> = (0..size)
        .map(|n| {
            let name = format!("flood-{n}");
            let email = format!("{name}@example.com");
            let pm = format!("pm_flood_{n}");
            job(&name, &email, &pm, partner)
        })
        .collect();
    {
        let mut books = lock(books);
        for job in &jobs {
            books
                .partner_of
                .insert(job.pay_id.to_string(), partner.to_owned());
        }
    }
    world
        .trace
        .note("intake", || format!("{partner} floods: {size} jobs"));
    for job in jobs {
        publishing.fetch_add(1, Ordering::SeqCst);
        let (world, books, publishing) = (world.clone(), books.clone(), publishing.clone());
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            accept(&world, &books, &job).await;
            publishing.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn publish_until_confirmed(world: &World, message: QueuedJob) {
    let intake = world.queue.named("intake");
    while intake.publish(message.clone()).await.is_err() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Stripe's webhook deliveries: each event the twin Stripe records reaches the jobs queue, as
/// the webhook intake publishes it, 0–20 s late (so out of order), and 30 % of them twice;
/// a share `missed` of them never (the intake was down longer than Stripe retries).
async fn courier(
    seed: u64,
    world: World,
    books: Arc<Mutex<Books>>,
    publishing: Arc<AtomicUsize>,
    missed: f64,
) {
    let mut rng = fastrand::Rng::with_seed(seed ^ EVENTS_SEED);
    let mut misses = fastrand::Rng::with_seed(seed ^ RECONCILE_SEED ^ EVENTS_SEED);
    loop {
        for (id, body) in world.stripe.next_events().await {
            let copies = if rng.f64() < TWICE_SHARE { 2 } else { 1 };
            if missed > 0.0 && misses.f64() < missed {
                world.trace.note("webhook", || format!("missed {id}"));
                continue;
            }
            for _ in 0..copies {
                let late = Duration::from_millis(rng.u64(..MAX_EVENT_DELAY_MS));
                let (world, books, publishing) = (world.clone(), books.clone(), publishing.clone());
                let (id, body) = (id.clone(), body.clone());
                publishing.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    tokio::time::sleep(late).await;
                    world.trace.note("webhook", || format!("deliver {id}"));
                    publish_event(&world, &books, &id, body).await;
                    publishing.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    }
}

/// The webhook intake takes one of Stripe's events: it publishes it to the jobs queue until
/// the broker confirms, and records it as taken.
async fn publish_event(world: &World, books: &Mutex<Books>, id: &str, body: Vec<u8>) {
    let message = QueuedJob::of_kind(STRIPE_EVENT_MESSAGE_TYPE, body, id, 1);
    publish_until_confirmed(world, message).await;
    lock(books).events_taken.insert(id.to_owned());
}

/// `autorenew reconcile --since 30d`: every event Stripe lists that the store does not record
/// as taken goes through the webhook's path again. After Redis lost everything the taken
/// records went with it, and every event is fed again (the worker must take each once).
async fn reconcile(world: &World, books: &Mutex<Books>) {
    let (taken, lost) = {
        let mut books = lock(books);
        books.reconciles += 1;
        (books.events_taken.clone(), books.data_lost)
    };
    for (id, body) in world.stripe.listed_events() {
        if lost || !taken.contains(&id) {
            world.trace.note("reconcile", || format!("feed {id}"));
            publish_event(world, books, &id, body).await;
        }
    }
}

/// The partners' cancels (`/cancelAutoRenewalRecord`): some payIds get one or two, `now` or
/// `period_end`, from a moment after their creation was accepted (the intake takes a cancel
/// only for a payId it knows) until well after it ended, so they race the creation, its
/// copies and each other. Drawn from a source of their own.
fn schedule_cancels(
    seed: u64,
    jobs: &[Job],
    world: &World,
    books: &Arc<Mutex<Books>>,
    publishing: &Arc<AtomicUsize>,
) {
    let mut rng = fastrand::Rng::with_seed(seed ^ CANCEL_SEED);
    for job in jobs {
        if rng.f64() >= CANCELED_SHARE {
            continue;
        }
        for n in 0..rng.usize(1..=MAX_CANCELS) {
            let when = if rng.bool() {
                CancelWhen::Now
            } else {
                CancelWhen::PeriodEnd
            };
            let after = Duration::from_millis(rng.u64(..30_000));
            let mut cancel = CancelJob {
                pay_id: job.pay_id.clone(),
                partner_code: job.partner_code.clone(),
                when,
                requested_at: String::new(),
                request_id: format!("cancel-{}-{n}", job.pay_id),
            };
            let pay_id = job.pay_id.to_string();
            let partner = job.partner_code.to_string();
            lock(books)
                .partner_of
                .insert(cancel.message_id(), partner.clone());
            let (world, books, publishing) = (world.clone(), books.clone(), publishing.clone());
            publishing.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                while !lock(&books).accepted.contains(&pay_id) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                world
                    .trace
                    .note("intake", || format!("cancel {pay_id} {when}"));
                // The intake's clock when it takes the cancel.
                let now_ms = i64::try_from(world.clock.now_ms()).unwrap_or(i64::MAX);
                cancel.requested_at = autorenew::domain::clock::rfc3339_ms(now_ms);
                let message = QueuedJob::of_kind(
                    CANCEL_MESSAGE_TYPE,
                    cancel.encode(),
                    &cancel.message_id(),
                    1,
                )
                .for_partner(&partner);
                publish_until_confirmed(&world, message).await;
                lock(&books).cancels.push((pay_id, when));
                publishing.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}

/// `autorenew dlq replay`: every dead letter back on the jobs queue at attempt 1. Like the tool,
/// it clears nothing: a payId that ended keeps its ending, and the copy only announces it again.
async fn replay(world: &World, books: &Mutex<Books>) {
    lock(books).replays += 1;
    let replayer = world.queue.named("dlq");
    for (letter, reason) in world.queue.take_dead_letters() {
        if world.store.is_away() {
            world.queue.return_dead_letter(letter, reason);
            continue;
        }
        // The tool keeps the partner's header: the copy goes back to its lane.
        let mut copy = QueuedJob::of_kind(&letter.kind, letter.body.clone(), &letter.message_id, 1);
        copy.partner = letter.partner.clone();
        if replayer.publish(copy).await.is_err() {
            world.queue.return_dead_letter(letter, reason);
        }
    }
}

fn job_settings() -> JobSettings {
    JobSettings {
        plans: BTreeMap::from([(
            "basic".to_owned(),
            PlanSettings {
                price: Some(PRICE.into()),
                interval: "month".into(),
            },
        )]),
        payment_behavior: "allow_incomplete".into(),
        retry: RetryPolicy {
            step_retries: 2,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            jitter: false,
            stop: tokio_util::sync::CancellationToken::new(),
        },
        lock_ttl: LOCK_TTL,
        give_up_after: GIVE_UP_AFTER,
        delivery_limit: DELIVERY_LIMIT,
        prices: Mutex::default(),
    }
}

/// Starts a worker process's incarnation: its consumers of every lane (the real rule's prefetch
/// a lane) and its loop, under a fresh name (the broker tracks unacked deliveries by consumer)
/// and a fresh price cache.
fn start(
    world: &World,
    process: &Arc<Mutex<Process>>,
    index: usize,
    incarnation: u32,
    concurrency: usize,
) {
    let name = format!("w{index}.{incarnation}");
    let skew_ms = lock(process).skew_ms;
    world
        .trace
        .note(&name, || format!("starts (clock off by {skew_ms} ms)"));
    let mut stripe = world.stripe.named(&name);
    if let Some(per_second) = world.budget {
        // Each process has its own gate, asking the one budget all of them share.
        let gate = SharedBudget::asking(
            Arc::new(world.store.named(&name)),
            per_second,
            HashMap::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        stripe = stripe.with_budget(Arc::new(gate));
    }
    let ctx = Arc::new(JobContext {
        ports: JobPorts {
            queue: Arc::new(world.queue.named(&name)),
            store: Arc::new(world.store.named(&name)),
            stripe: Arc::new(stripe),
            clock: Arc::new(world.clock.skewed(skew_ms)),
        },
        settings: job_settings(),
    });
    let slots = u16::try_from(concurrency).unwrap_or(u16::MAX);
    world.queue.consume(&name, slots, lane_prefetch(slots));
    let consumer = tokio::spawn(consume(
        world.clone(),
        process.clone(),
        name.clone(),
        ctx,
        concurrency,
    ));
    let mut process = lock(process);
    process.name = name;
    process.alive = true;
    process.tasks = vec![consumer.abort_handle()];
    process.running.clear();
}

/// The consumer loop, as `worker::Worker`'s: it takes the next delivery the broker pushed, then
/// waits for one of its `concurrency` slots, and runs the job in a task of its own; after a job
/// found Redis away it pauses until Redis answers, as the real consumer does.
async fn consume(
    world: World,
    process: Arc<Mutex<Process>>,
    name: String,
    ctx: Arc<JobContext>,
    concurrency: usize,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let trouble = Arc::new(AtomicBool::new(false));
    let mut count = 0_u32;
    loop {
        let delivery = world.queue.receive(&name).await;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        while trouble.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if !world.store.is_away() {
                trouble.store(false, Ordering::SeqCst);
            }
        }
        world.queue.started(delivery.tag);
        count += 1;
        let token = format!("{name}/{count}");
        let (world, process_ref, ctx, trouble) =
            (world.clone(), process.clone(), ctx.clone(), trouble.clone());
        lock(&process).running.insert(token.clone());
        let task = tokio::spawn(async move {
            let incoming = Arc::new(delivery.incoming);
            let decoded = Arc::new(Message::decode(&incoming));
            // Like `worker::run_job`: the message in a task of its own, so a panic ends it the
            // way `after_panic` says.
            let inner = {
                let (ctx, incoming, token) = (ctx.clone(), incoming.clone(), token.clone());
                let decoded = decoded.clone();
                tokio::spawn(async move { handle(&ctx, &decoded, &incoming, &token).await })
            };
            lock(&process_ref).tasks.push(inner.abort_handle());
            let handled = match inner.await {
                Ok(handled) => handled,
                Err(error) if error.is_panic() => {
                    world.trace.note(&token, || "job panicked".into());
                    lock(&world.panicked).insert(token.clone());
                    after_panic(&ctx, &decoded, &incoming, &token).await
                }
                Err(_) => return,
            };
            world.trace.note(&token, || {
                format!("handled: {} {:?}", handled.label, handled.disposition)
            });
            match handled.disposition {
                Disposition::Ack => world.queue.ack(delivery.tag),
                Disposition::Requeue => world.queue.nack(delivery.tag),
                Disposition::HandBack => {
                    trouble.store(true, Ordering::SeqCst);
                    world.queue.nack(delivery.tag);
                }
            }
            lock(&process_ref).running.remove(&token);
            drop(permit);
        });
        lock(&process).tasks.push(task.abort_handle());
    }
}

/// Kills a worker process at whatever await its tasks are in: its unacked deliveries come
/// back, its locks stay until their TTL.
fn crash(world: &World, process: &Mutex<Process>, books: &Mutex<Books>) -> bool {
    let mut process = lock(process);
    if !process.alive {
        return false;
    }
    for task in process.tasks.drain(..) {
        task.abort();
    }
    process.alive = false;
    let mut books = lock(books);
    books.crashes += 1;
    books
        .crashed_tokens
        .extend(std::mem::take(&mut process.running));
    world.queue.consumer_lost(&process.name);
    true
}

/// Waits until nothing is left to do: queues empty, no job running, no Stripe request in
/// flight, the intake done. False if that takes longer than the cap.
async fn settle(
    world: &World,
    processes: &[Arc<Mutex<Process>>],
    publishing: &AtomicUsize,
) -> bool {
    let deadline = Instant::now() + SETTLE_CAP;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let running: usize = processes.iter().map(|p| lock(p).running.len()).sum();
        if running == 0
            && world.queue.is_idle()
            && world.stripe.in_flight() == 0
            && !world.stripe.has_events()
            && publishing.load(Ordering::SeqCst) == 0
        {
            world.trace.note("sim", || "settled".into());
            return true;
        }
    }
    false
}
