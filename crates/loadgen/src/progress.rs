//! Live counters and the progress bar on stderr (indicatif), with rates over the last second.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

/// How often the bar is redrawn.
const REDRAW: Duration = Duration::from_millis(250);
/// The window live rates are measured over.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Counters the senders and the follower bump; the bar reads them.
#[derive(Debug, Default)]
pub struct Live {
    sent: AtomicU64,
    accepted: AtomicU64,
    shed: AtomicU64,
    bad: AtomicU64,
    results: AtomicU64,
}

impl Live {
    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// One answer: accepted (200 / ack), shed (429 / 503) or bad (no answer, or contradicting).
    pub fn answered(&self, accepted: bool, shed: bool, bad: bool) {
        if accepted {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
        if shed {
            self.shed.fetch_add(1, Ordering::Relaxed);
        }
        if bad {
            self.bad.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The first result event of one of this run's jobs.
    pub fn result(&self) {
        self.results.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; 5] {
        [
            self.sent.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
            self.shed.load(Ordering::Relaxed),
            self.bad.load(Ordering::Relaxed),
            self.results.load(Ordering::Relaxed),
        ]
    }
}

/// The bar, redrawn by a background task until [`Progress::finish`].
pub struct Progress {
    bar: ProgressBar,
    following: Arc<AtomicBool>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// A bar over `requests` when the count is known, else over the `duration`'s seconds.
    /// Hidden with `visible` false or when stderr is not a terminal (scripts, CI).
    pub fn start(
        live: Arc<Live>,
        requests: Option<u64>,
        duration: Option<Duration>,
        visible: bool,
    ) -> Progress {
        let target = if visible && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let by_time = requests.is_none();
        let length = requests.or(duration.map(|d| d.as_secs().max(1)));
        let bar = ProgressBar::with_draw_target(length, target);
        let template = if by_time {
            "{elapsed_precise} [{bar:20}] {pos}/{len}s {msg}"
        } else {
            "{elapsed_precise} [{bar:20}] {pos}/{len} {msg}"
        };
        set_template(&bar, template);
        let following = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let task = tokio::spawn(redraw(
            bar.clone(),
            live,
            by_time,
            following.clone(),
            stop.clone(),
        ));
        Progress {
            bar,
            following,
            stop,
            task,
        }
    }

    /// Sending is over: the bar now counts result events of the `expected` accepted jobs.
    pub fn following(&self, expected: u64) {
        set_template(
            &self.bar,
            "{elapsed_precise} [{bar:20}] {pos}/{len} results, {msg}",
        );
        self.following.store(true, Ordering::Relaxed);
        self.bar.set_position(0);
        self.bar.set_length(expected);
    }

    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
        self.bar.finish_and_clear();
    }
}

fn set_template(bar: &ProgressBar, template: &str) {
    // The templates are constants; should one not parse, the bar keeps its previous look.
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
}

async fn redraw(
    bar: ProgressBar,
    live: Arc<Live>,
    by_time: bool,
    following: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let mut window: VecDeque<(Instant, [u64; 5])> = VecDeque::new();
    let mut tick = tokio::time::interval(REDRAW);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let counts = live.snapshot();
        window.push_back((now, counts));
        while window.len() > 2 && window.front().is_some_and(|(t, _)| now - *t > RATE_WINDOW) {
            window.pop_front();
        }
        let rate = |i: usize| match window.front() {
            Some((t, old)) if now > *t => {
                counts[i].saturating_sub(old[i]) as f64 / (now - *t).as_secs_f64()
            }
            _ => 0.0,
        };
        let [sent, accepted, shed, bad, results] = counts;
        if following.load(Ordering::Relaxed) {
            bar.set_position(results);
            bar.set_message(format!("{:.0}/s", rate(4)));
            continue;
        }
        bar.set_position(if by_time {
            started.elapsed().as_secs()
        } else {
            sent
        });
        // Short enough for an 80-column terminal next to the bar: a wrapped bar redraws badly.
        bar.set_message(format!(
            "{:.0}/s ok {accepted} shed {shed} bad {bad} res {results}",
            rate(0)
        ));
    }
}
