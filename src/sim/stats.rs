//! Counts of what the simulator received and did, for `/_sim/stats`: requests by route and
//! status (so a test can assert "called exactly once") and faults by kind.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

/// The status counted for an answer whose connection was dropped on purpose.
pub const DROPPED: u16 = 0;

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    RateLimited,
    Spurious429,
    Error,
    Hang,
    LostResponse,
    Scripted,
}

const FAULT_NAMES: [&str; 6] = [
    "rate_limited",
    "spurious_429",
    "errors",
    "hangs",
    "lost_responses",
    "scripted",
];

#[derive(Debug, Default)]
pub struct Stats {
    requests: HashMap<&'static str, BTreeMap<u16, u64>>,
    faults: [u64; 6],
}

impl Stats {
    pub fn record(&mut self, route: &'static str, status: u16) {
        *self
            .requests
            .entry(route)
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    pub fn fault(&mut self, fault: Fault) {
        self.faults[fault as usize] += 1;
    }

    /// `{"requests": {"POST /v1/customers": {"200": 2, "429": 1}}, "requests_total": 3,
    /// "faults": {...}}`; a dropped connection counts under `"dropped"`.
    pub fn to_json(&self) -> Value {
        let mut total = 0;
        let mut routes: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
        for (route, statuses) in &self.requests {
            let entry = routes.entry(route).or_default();
            for (status, count) in statuses {
                total += count;
                let name = if *status == DROPPED {
                    "dropped".to_owned()
                } else {
                    status.to_string()
                };
                entry.insert(name, json!(count));
            }
        }
        let faults: Map<String, Value> = FAULT_NAMES
            .iter()
            .zip(self.faults)
            .map(|(name, count)| ((*name).to_owned(), json!(count)))
            .collect();
        json!({"requests": routes, "requests_total": total, "faults": faults})
    }
}
