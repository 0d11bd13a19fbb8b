//! Schedules side by side: they share nothing (each has its own runtime, twins and random
//! sources), so a seed's schedule is the same whichever thread runs it, and the results are
//! handed over in the seeds' order, so the output reads as a run on one thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// One thread a core.
pub fn default_threads() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// Runs `work` on every seed, on `threads` threads, and hands each result to `take` (with the
/// seed's index and the seed) in the seeds' order, as soon as every earlier one is in.
pub fn run_all<T: Send>(
    seeds: &[u64],
    threads: u64,
    work: impl Fn(u64) -> T + Sync,
    mut take: impl FnMut(usize, u64, T),
) {
    let next = AtomicUsize::new(0);
    let (send, receive) = mpsc::channel::<(usize, T)>();
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, seeds.len().max(1) as u64) {
            let (send, next, work) = (send.clone(), &next, &work);
            scope.spawn(move || {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(index) else { break };
                    if send.send((index, work(seed))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(send);
        let mut waiting = BTreeMap::new();
        let mut due = 0;
        for (index, result) in receive {
            waiting.insert(index, result);
            while let Some(result) = waiting.remove(&due) {
                take(due, seeds[due], result);
                due += 1;
            }
        }
    });
}
