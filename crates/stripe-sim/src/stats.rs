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
    SavedError,
}

const FAULT_NAMES: [&str; 7] = [
    "rate_limited",
    "spurious_429",
    "errors",
    "hangs",
    "lost_responses",
    "scripted",
    "saved_errors",
];

/// What became of one webhook delivery attempt.
#[derive(Debug, Clone, Copy)]
pub enum Delivered {
    Attempt,
    Ok,
    Failed,
    GaveUp,
}

const DELIVERY_NAMES: [&str; 4] = ["attempts", "delivered", "failed_attempts", "given_up"];

#[derive(Debug, Default)]
pub struct Stats {
    requests: HashMap<&'static str, BTreeMap<u16, u64>>,
    faults: [u64; 7],
    webhooks: [u64; 4],
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

    pub fn delivery(&mut self, what: Delivered) {
        self.webhooks[what as usize] += 1;
    }

    /// `{"requests": {"POST /v1/customers": {"200": 2, "429": 1}}, "requests_by_route":
    /// {"POST /v1/customers": 3}, "requests_total": 3, "faults": {...}, "webhooks":
    /// {...}}`; a dropped connection counts under `"dropped"`.
    pub fn to_json(&self) -> Value {
        let mut total = 0;
        let mut routes: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
        let mut by_route: BTreeMap<&str, u64> = BTreeMap::new();
        for (route, statuses) in &self.requests {
            let entry = routes.entry(route).or_default();
            for (status, count) in statuses {
                total += count;
                *by_route.entry(route).or_default() += count;
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
        let webhooks: Map<String, Value> = DELIVERY_NAMES
            .iter()
            .zip(self.webhooks)
            .map(|(name, count)| ((*name).to_owned(), json!(count)))
            .collect();
        json!({
            "requests": routes, "requests_by_route": by_route, "requests_total": total,
            "faults": faults, "webhooks": webhooks,
        })
    }
}
