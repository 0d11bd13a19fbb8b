//! The deterministic simulation of the partner push: several notifier processes, each with a
//! lane per partner, run the real delivery code (`autorenew::push::Deliverer`) against the
//! in-memory twins of the attempt log, the partner and wait queues, and the partners'
//! endpoints ([`twins`]), on a paused tokio clock; crashes between the send and the ack,
//! endpoints that answer late, fail, never answer or are gone, Redis away or losing answers,
//! the broker away or nacking while up, breakers opening and closing, all drawn from one seed.
//! Then the invariants:
//!
//! 1. every event published ends delivered, or failed (kept for recovery), or pending at a
//!    disabled partner, and nothing of a partner that is not disabled is left on its queues;
//! 2. after a recovery (`/recoverNotifications`) once the endpoints are healthy, every event of
//!    a partner that is not disabled reached its endpoint: none is lost;
//! 3. an event is never sent under two `webhook-id`s, and always under its own;
//! 4. an event recorded `delivered` was taken by its endpoint;
//! 5. a delivered event never goes back to pending or failed.
//!
//! `SIM_PUSH_SCHEDULES` (default 200) schedules from `SIM_SEED` (default 20261207) on, on
//! `SIM_THREADS` threads (default: one a core); `SIM_TRACE=1` prints each schedule's summary. The last line is
//! `push simulation: N schedules, V violations`.

// The schedules run side by side, as the job path's do.
#[path = "../parallel.rs"]
mod parallel;
mod twins;

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autorenew::domain::push::{DeliveryStatus, Trigger, webhook_id};
use autorenew::push::ports::{BreakerRule, PushClock};
use autorenew::push::{Deliverer, DeliveryEnd, Lane};
use bytes::Bytes;
use parallel::{default_threads, run_all};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use twins::{
    Endpoint, MemoryEndpoints, MemoryPushLog, MemoryPushQueue, PushCopy, Retries, SimClock, lock,
};

const BASE_SEED: u64 = 20_261_207;
/// The notifier's HTTP timeout (`push.timeout_secs`), short so that silent endpoints matter.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
const SETTLE_CAP: Duration = Duration::from_secs(4 * 3600);
/// How often an idle lane looks for a message, and a paused one at its partner's state.
const POLL: Duration = Duration::from_millis(50);
const PAUSED_POLL: Duration = Duration::from_millis(250);

fn main() -> ExitCode {
    let schedules = env_number("SIM_PUSH_SCHEDULES", 200);
    let base = env_number("SIM_SEED", BASE_SEED);
    let print_all = std::env::var("SIM_TRACE").is_ok_and(|v| v == "1");
    let threads = env_number("SIM_THREADS", default_threads());
    let seeds: Vec<u64> = (0..schedules).map(|i| base.wrapping_add(i)).collect();
    let mut violations = 0;
    let mut reached = BTreeMap::<&str, u64>::new();
    run_all(&seeds, threads, run, |index, seed, report| {
        for (name, hit) in &report.reached {
            if *hit {
                *reached.entry(name).or_default() += 1;
            }
        }
        if print_all {
            println!("--- seed {seed}: {}", report.summary);
        }
        if !report.violations.is_empty() {
            violations += report.violations.len();
            println!(
                "schedule {index} (seed {seed}) broke {} invariant(s): {}",
                report.violations.len(),
                report.summary
            );
            for violation in &report.violations {
                println!("  violation: {violation}");
            }
            println!(
                "  replay it with: SIM_PUSH_SCHEDULES=1 SIM_SEED={seed} cargo test --test simulate_push"
            );
        }
    });
    let reached: Vec<String> = reached.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("push schedules that reached: {}", reached.join(", "));
    println!("push simulation: {schedules} schedules, {violations} violations");
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Report {
    violations: Vec<String>,
    summary: String,
    reached: Vec<(&'static str, bool)>,
}

fn run(seed: u64) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(schedule(seed))
}

#[derive(Clone)]
struct World {
    log: MemoryPushLog,
    queue: MemoryPushQueue,
    endpoints: MemoryEndpoints,
    clock: SimClock,
    partners: Vec<String>,
    rule: BreakerRule,
    schedule: Vec<Duration>,
}

/// A notifier process: its lane tasks, under a name per incarnation.
#[derive(Default)]
struct Process {
    name: String,
    alive: bool,
    /// Its lanes and their deliveries: a crash aborts them all.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    running: Arc<AtomicUsize>,
}

async fn schedule(seed: u64) -> Report {
    let mut rng = fastrand::Rng::with_seed(seed);
    let clock = SimClock {
        start: Instant::now(),
    };
    let partners: Vec<String> = (0..rng.usize(1..=4)).map(|i| format!("P{i}")).collect();
    let world = World {
        log: MemoryPushLog::new(clock),
        queue: MemoryPushQueue::new(rng.u64(..)),
        endpoints: MemoryEndpoints::new(CLIENT_TIMEOUT),
        clock,
        partners: partners.clone(),
        rule: BreakerRule {
            failures: rng.u32(2..=10),
            cooldown: Duration::from_millis(rng.u64(500..5_000)),
            longest_cooldown: Duration::from_secs(rng.u64(5..=30)),
            disable_after: Duration::from_secs(3600),
        },
        schedule: [1, 2, 5, 10, 20]
            .into_iter()
            .take(rng.usize(1..=5))
            .map(Duration::from_secs)
            .collect(),
    };
    world.queue.set_faults(rng.f64() * 0.1, rng.f64() * 0.1);
    let notifiers = rng.usize(1..=3);
    let max_in_flight = rng.u16(1..=4);
    let window = Duration::from_secs(rng.u64(10..=60));
    let event_count = rng.usize(3..=30);

    // The events, published by the workers (retried until confirmed, as `announce` is).
    let published = Arc::new(Mutex::new(BTreeMap::<String, String>::new()));
    let publishing = Arc::new(AtomicUsize::new(0));
    for n in 0..event_count {
        let partner = partners[rng.usize(..partners.len())].clone();
        let at = Duration::from_millis(rng.u64(..window.as_millis() as u64));
        let (world, published, publishing) = (world.clone(), published.clone(), publishing.clone());
        publishing.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            let id = format!("{partner}:pay-{n}:succeeded");
            let body = serde_json::json!({
                "specversion": "1.0", "id": id, "source": "urn:autorenew:sim",
                "type": "autorenew.subscription.succeeded", "subject": format!("pay-{n}"),
                "time": "2027-01-15T08:00:00Z", "datacontenttype": "application/json",
                "data": {"payId": format!("pay-{n}"), "partnerCode": partner},
            })
            .to_string()
            .into_bytes();
            let copy = PushCopy {
                partner: partner.clone(),
                body,
                attempts: 0,
                trigger: None,
            };
            while world.queue.publish(copy.clone(), None).await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            lock(&published).insert(id, partner);
            publishing.fetch_sub(1, Ordering::SeqCst);
        });
    }

    let processes: Vec<Arc<Mutex<Process>>> = (0..notifiers)
        .map(|_| Arc::new(Mutex::new(Process::default())))
        .collect();
    for (index, process) in processes.iter().enumerate() {
        start(&world, process, index, 0, max_in_flight, rng.u64(..));
    }

    // The chaos.
    let mut timeline: Vec<(Duration, Chaos)> = Vec::new();
    let at = |rng: &mut fastrand::Rng| Duration::from_millis(rng.u64(..window.as_millis() as u64));
    for _ in 0..rng.usize(0..=4) {
        timeline.push((at(&mut rng), Chaos::Crash(rng.usize(..notifiers))));
    }
    for _ in 0..rng.usize(0..=2) {
        timeline.push((
            at(&mut rng),
            Chaos::RedisAway(Duration::from_millis(rng.u64(100..4_000))),
        ));
    }
    for _ in 0..rng.usize(0..=2) {
        timeline.push((at(&mut rng), Chaos::LoseAnswers(rng.u32(1..=3))));
    }
    for _ in 0..rng.usize(0..=2) {
        timeline.push((
            at(&mut rng),
            Chaos::BrokerAway(Duration::from_millis(rng.u64(100..3_000))),
        ));
    }
    for _ in 0..rng.usize(0..=6) {
        let partner = partners[rng.usize(..partners.len())].clone();
        let endpoint = match rng.u32(0..100) {
            0..=29 => Endpoint::Healthy(Duration::from_millis(rng.u64(1..3_000))),
            30..=54 => Endpoint::Failing,
            55..=74 => Endpoint::Silent,
            75..=94 => Endpoint::Late,
            _ => Endpoint::Gone,
        };
        timeline.push((at(&mut rng), Chaos::Endpoint(partner, endpoint)));
    }
    timeline.sort_by_key(|(when, _)| *when);
    let operator_enables = rng.bool();
    let mut reached = BTreeMap::<&'static str, bool>::new();
    let mut incarnations = vec![0_u32; notifiers];
    for (when, chaos) in timeline {
        tokio::time::sleep_until(clock.start + when).await;
        match chaos {
            Chaos::Crash(index) => {
                if crash(&world, &processes[index]) {
                    reached.insert("crash", true);
                    incarnations[index] += 1;
                    let (world, process) = (world.clone(), processes[index].clone());
                    let (restart, incarnation, jitter) = (
                        Duration::from_millis(rng.u64(200..3_000)),
                        incarnations[index],
                        rng.u64(..),
                    );
                    tokio::spawn(async move {
                        tokio::time::sleep(restart).await;
                        start(&world, &process, index, incarnation, max_in_flight, jitter);
                    });
                }
            }
            Chaos::RedisAway(away) => {
                world.log.set_away(true);
                let log = world.log.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(away).await;
                    log.set_away(false);
                });
            }
            Chaos::LoseAnswers(calls) => world.log.lose_answers(calls),
            Chaos::BrokerAway(away) => {
                world.queue.set_down(true);
                let queue = world.queue.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(away).await;
                    queue.set_down(false);
                });
            }
            Chaos::Endpoint(partner, endpoint) => {
                reached.insert(endpoint_name(endpoint), true);
                world.endpoints.set(&partner, endpoint);
            }
        }
    }
    tokio::time::sleep_until(clock.start + window).await;

    // Every fault ends; every endpoint answers again (a disabled partner stays disabled).
    world.log.set_away(false);
    world.queue.set_down(false);
    world.queue.set_faults(0.0, 0.0);
    for partner in &partners {
        world
            .endpoints
            .set(partner, Endpoint::Healthy(Duration::from_millis(10)));
    }
    for (index, process) in processes.iter().enumerate() {
        if !lock(process).alive {
            incarnations[index] += 1;
            start(
                &world,
                process,
                index,
                incarnations[index],
                max_in_flight,
                rng.u64(..),
            );
        }
    }
    let mut violations = Vec::new();
    if !settle(&world, &processes, &publishing).await {
        violations.push(format!("the push did not settle within {SETTLE_CAP:?}"));
    }
    let published = lock(&published).clone();
    ends(&world, &published, &mut violations);

    // An operator recovers each partner's failed events, and enables a disabled push.
    for partner in &partners {
        if world.log.breaker(partner).disabled {
            reached.insert("disabled", true);
            if operator_enables {
                world.log.enable(partner);
            }
        }
    }
    for ((partner, _), record) in world.log.records() {
        if record.status == DeliveryStatus::Failed && !world.log.breaker(&partner).disabled {
            reached.insert("failed then recovered", true);
            let copy = PushCopy {
                partner,
                body: record.body.clone(),
                attempts: 0,
                trigger: Some(Trigger::Recover.as_str().to_owned()),
            };
            while world.queue.publish(copy.clone(), None).await.is_err() {}
        }
    }
    if !settle(&world, &processes, &publishing).await {
        violations.push("the push did not settle after the recovery".into());
    }
    after_recovery(&world, &published, &mut violations);

    let records = world.log.records();
    let attempts: usize = records.values().map(|r| r.attempts.len()).sum();
    if records.values().any(|r| r.attempts.len() > 1) {
        reached.insert("retried", true);
    }
    if world.endpoints.seen().values().any(|s| s.taken > 1) {
        reached.insert("delivered twice", true);
    }
    let summary = format!(
        "{} partners, {notifiers} notifiers x {max_in_flight}, {} events, {attempts} attempts, \
         schedule {:?}, breaker at {}",
        partners.len(),
        published.len(),
        world.schedule,
        world.rule.failures
    );
    Report {
        violations,
        summary,
        reached: reached.into_iter().collect(),
    }
}

#[derive(Debug, Clone)]
enum Chaos {
    Crash(usize),
    RedisAway(Duration),
    LoseAnswers(u32),
    BrokerAway(Duration),
    Endpoint(String, Endpoint),
}

fn endpoint_name(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Healthy(_) => "endpoint slow",
        Endpoint::Failing => "endpoint 503",
        Endpoint::Silent => "endpoint silent",
        Endpoint::Late => "endpoint late",
        Endpoint::Gone => "endpoint 410",
    }
}

/// Starts a notifier incarnation: a lane task per partner on a fresh [`Deliverer`].
fn start(
    world: &World,
    process: &Arc<Mutex<Process>>,
    index: usize,
    incarnation: u32,
    max_in_flight: u16,
    jitter_seed: u64,
) {
    let mut guard = lock(process);
    if guard.alive {
        return;
    }
    let name = format!("n{index}.{incarnation}");
    let deliverer = Arc::new(Deliverer {
        log: Arc::new(world.log.clone()),
        sender: Arc::new(world.endpoints.clone()),
        retries: Arc::new(Retries(world.queue.clone())),
        clock: Arc::new(world.clock),
        schedule: world.schedule.clone(),
        retention: Duration::from_secs(14 * 86_400),
        breaker: world.rule,
        jitter: Mutex::new(fastrand::Rng::with_seed(jitter_seed)),
    });
    let running = Arc::new(AtomicUsize::new(0));
    let tasks = Arc::new(Mutex::new(Vec::new()));
    for partner in &world.partners {
        let url = format!("http://partner/{partner}");
        let lane = Arc::new(Lane::new(partner, &url, Vec::new(), max_in_flight));
        let task = tokio::spawn(run_lane(
            world.clone(),
            lane,
            deliverer.clone(),
            name.clone(),
            running.clone(),
            tasks.clone(),
        ));
        lock(&tasks).push(task.abort_handle());
    }
    *guard = Process {
        name,
        alive: true,
        tasks,
        running,
    };
}

/// A lane, as `src/push/lane.rs` runs one: paused while its partner is disabled or its breaker
/// is open (or Redis cannot say), otherwise up to `max_in_flight` deliveries at once.
async fn run_lane(
    world: World,
    lane: Arc<Lane>,
    deliverer: Arc<Deliverer>,
    consumer: String,
    running: Arc<AtomicUsize>,
    handles: Arc<Mutex<Vec<AbortHandle>>>,
) {
    let slots = Arc::new(Semaphore::new(usize::from(lane.max_in_flight)));
    loop {
        let breaker = world.log.breaker(&lane.partner);
        let now = world.clock.now_ms();
        if breaker.disabled || breaker.open_until > now || world.queue.is_down() {
            lane.paused.store(true, Ordering::SeqCst);
            tokio::time::sleep(PAUSED_POLL).await;
            continue;
        }
        lane.paused.store(false, Ordering::SeqCst);
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some((tag, copy)) = world.queue.take(&lane.partner, &consumer) else {
            drop(permit);
            tokio::time::sleep(POLL).await;
            continue;
        };
        running.fetch_add(1, Ordering::SeqCst);
        let (world, lane, deliverer, running) = (
            world.clone(),
            lane.clone(),
            deliverer.clone(),
            running.clone(),
        );
        let task = tokio::spawn(async move {
            let trigger = Trigger::parse(copy.trigger.as_deref());
            let body = Bytes::from(copy.body);
            match deliverer
                .deliver(&lane, &body, copy.attempts, trigger)
                .await
            {
                DeliveryEnd::Ack => world.queue.ack(tag),
                DeliveryEnd::HandBack => world.queue.nack(tag),
            }
            running.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
        });
        lock(&handles).push(task.abort_handle());
    }
}

/// Kills a notifier at whatever await its tasks are in; its unacked deliveries come back.
fn crash(world: &World, process: &Mutex<Process>) -> bool {
    let mut process = lock(process);
    if !process.alive {
        return false;
    }
    for task in lock(&process.tasks).drain(..) {
        task.abort();
    }
    process.alive = false;
    process.running.store(0, Ordering::SeqCst);
    world.queue.consumer_lost(&process.name);
    true
}

/// Waits until nothing is left to do: every partner's queues empty (a disabled partner's may
/// hold its pending events), no delivery running, every event published.
async fn settle(
    world: &World,
    processes: &[Arc<Mutex<Process>>],
    publishing: &AtomicUsize,
) -> bool {
    let deadline = Instant::now() + SETTLE_CAP;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let running: usize = processes
            .iter()
            .map(|p| lock(p).running.load(Ordering::SeqCst))
            .sum();
        let held = world
            .partners
            .iter()
            .filter(|p| !world.log.breaker(p).disabled)
            .map(|p| world.queue.held(p))
            .sum::<usize>();
        if running == 0 && held == 0 && publishing.load(Ordering::SeqCst) == 0 {
            return true;
        }
    }
    false
}

/// Invariants 1, 3, 4 and 5, once the world settled.
fn ends(world: &World, published: &BTreeMap<String, String>, violations: &mut Vec<String>) {
    let records: BTreeMap<String, _> = world
        .log
        .records()
        .into_values()
        .map(|r| (r.event_id.clone(), r))
        .collect();
    let seen = world.endpoints.seen();
    for (event_id, partner) in published {
        let disabled = world.log.breaker(partner).disabled;
        match records.get(event_id) {
            None if disabled => {}
            None => violations.push(format!("{event_id}: published but never recorded (lost)")),
            Some(record) => match record.status {
                DeliveryStatus::Delivered | DeliveryStatus::Failed => {}
                DeliveryStatus::Pending if disabled => {}
                DeliveryStatus::Pending => violations.push(format!(
                    "{event_id}: pending at a partner whose push is not disabled, with nothing left to try it"
                )),
            },
        }
        if let Some(record) = records.get(event_id) {
            if record.status == DeliveryStatus::Delivered
                && seen
                    .get(&(partner.clone(), event_id.clone()))
                    .is_none_or(|s| s.taken == 0)
            {
                violations.push(format!(
                    "{event_id}: recorded delivered but its endpoint never took it"
                ));
            }
            if let Some(at) = record
                .history
                .iter()
                .position(|s| *s == DeliveryStatus::Delivered)
                && record.history[at..]
                    .iter()
                    .any(|s| *s != DeliveryStatus::Delivered)
            {
                violations.push(format!(
                    "{event_id}: went back from delivered: {:?}",
                    record.history
                ));
            }
        }
    }
    for ((_, event_id), arrivals) in &seen {
        let own: BTreeSet<String> = BTreeSet::from([webhook_id(event_id)]);
        if arrivals.webhook_ids != own {
            violations.push(format!(
                "{event_id}: sent under {:?}, not only its own webhook-id",
                arrivals.webhook_ids
            ));
        }
    }
}

/// Invariant 2: after the recovery, every event of a partner not disabled reached its endpoint.
fn after_recovery(
    world: &World,
    published: &BTreeMap<String, String>,
    violations: &mut Vec<String>,
) {
    let seen = world.endpoints.seen();
    for (event_id, partner) in published {
        if world.log.breaker(partner).disabled {
            continue;
        }
        if seen
            .get(&(partner.clone(), event_id.clone()))
            .is_none_or(|s| s.taken == 0)
        {
            violations.push(format!(
                "{event_id}: never reached {partner}'s endpoint (lost)"
            ));
        }
    }
}
