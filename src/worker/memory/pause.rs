//! Live processes that stop for a while: a stop-the-world garbage collection, a VM migrated
//! or throttled, a `SIGSTOP`. The process is not dead: its connections stay open and the broker
//! does not take its deliveries back, but nothing it does moves, its lock's heartbeat included,
//! so its payId locks expire under it and another copy may take them. When it resumes, it
//! carries on from where it stopped, with what it believed before.
//!
//! The twins hold each call of a paused process at both ends: it neither leaves (the request
//! is not sent) nor comes back (the answer waits in the socket) until the pause ends. What a
//! call had already started elsewhere (a Stripe request the server is executing) goes on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::Trace;

/// Who pauses, when and for how long: shared by the twins of one simulated world.
#[derive(Clone, Default)]
pub struct Pauses {
    state: Arc<Mutex<State>>,
    trace: Option<Trace>,
}

#[derive(Default)]
struct State {
    /// Each paused process (by the name its handles carry), and when it resumes.
    until: BTreeMap<String, Instant>,
    /// How many pauses began.
    count: u32,
    /// The processes whose calls may pause them, with the draws: the chance a call starts a
    /// pause, and how long one lasts.
    prone: Option<Prone>,
}

struct Prone {
    rng: fastrand::Rng,
    /// The names (prefixes: every incarnation of a process) whose calls may start a pause.
    who: Vec<String>,
    rate: f64,
    /// Calls (by the first word of their name) where a pause starts more often.
    hot: Vec<(String, f64)>,
    length: std::ops::Range<Duration>,
}

impl Pauses {
    /// No process pauses until [`Pauses::pause`] or [`Pauses::set_prone`] says so.
    pub fn new(trace: Trace) -> Self {
        Pauses {
            state: Arc::default(),
            trace: Some(trace),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `who` stops now for `length`.
    pub fn pause(&self, who: &str, length: Duration) {
        let until = Instant::now() + length;
        let mut state = self.state();
        let entry = state.until.entry(who.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
        state.count += 1;
        drop(state);
        if let Some(trace) = &self.trace {
            trace.note(who, || format!("pauses for {} ms", length.as_millis()));
        }
    }

    /// From now on, each call of a process whose name starts with one of `who` starts a pause
    /// with chance `rate`, of a length drawn from `length` (drawn from `seed`), so pauses land
    /// between the steps of a job. A call named in `hot` (by its name's first word: `finish`,
    /// `mark`) starts one with its own chance instead: as FoundationDB's BUGGIFY does, faults
    /// are drawn more often where they matter, here just before a job's last steps, when a
    /// paused worker may wake to end a payId another worker took over meanwhile.
    pub fn set_prone(
        &self,
        seed: u64,
        who: Vec<String>,
        rate: f64,
        hot: &[(&str, f64)],
        length: std::ops::Range<Duration>,
    ) {
        self.state().prone = Some(Prone {
            rng: fastrand::Rng::with_seed(seed),
            who,
            rate,
            hot: hot
                .iter()
                .map(|(call, rate)| ((*call).to_owned(), *rate))
                .collect(),
            length,
        });
    }

    /// How many pauses began.
    pub fn count(&self) -> u32 {
        self.state().count
    }

    /// No call starts a pause any more (pauses under way still end when they are due).
    pub fn stop_drawing(&self) {
        self.state().prone = None;
    }

    /// Waits while `who` is paused. Called by the twins at the start of every call (`call`
    /// names it), which may begin a pause of its own (see [`Pauses::set_prone`]).
    pub async fn hold(&self, who: &str, call: &str) {
        let drawn = {
            let mut state = self.state();
            state.prone.as_mut().and_then(|prone| {
                if !prone.who.iter().any(|name| who.starts_with(name.as_str())) {
                    return None;
                }
                let word = call.split(' ').next().unwrap_or_default();
                let rate = prone
                    .hot
                    .iter()
                    .find(|(hot, _)| hot == word)
                    .map_or(prone.rate, |(_, rate)| *rate);
                (prone.rng.f64() < rate).then(|| {
                    let (low, high) = (prone.length.start, prone.length.end);
                    let span = u64::try_from((high - low).as_millis()).unwrap_or(0);
                    low + Duration::from_millis(prone.rng.u64(..=span))
                })
            })
        };
        if let Some(length) = drawn {
            self.pause(who, length);
        }
        self.wait(who).await;
    }

    /// Waits until `who` is not paused: at the end of a call, so its answer waits too.
    pub async fn wait(&self, who: &str) {
        loop {
            let until = self.state().until.get(who).copied();
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }
}
