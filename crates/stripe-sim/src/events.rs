//! Stripe's events: a record of what happened, newest last, for `GET /v1/events` and for the
//! webhook deliveries queued when one is recorded.
//!
//! An event's `data.object` is a snapshot taken when it happened, as Stripe's is: a later
//! change to the object does not change the event.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use serde_json::{Value, json};

use super::store::new_id;
use super::webhooks::{Delivery, Endpoint};

/// The API version events are rendered at: the one async-stripe 1.0 rc.10 (the worker's
/// client) pins, so that the shapes are those its types read.
pub const API_VERSION: &str = "2026-09-30.endive";

/// The API request that caused an event; both `None` for what the clock did (a renewal).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// One event, kept as the JSON it was delivered as: a snapshot cannot change, and bytes are a
/// fraction of the memory of a parsed tree (a load test makes several events a job).
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub created: i64,
    pub kind: String,
    body: Bytes,
    /// Deliveries not yet answered `2xx`, as Stripe counts them.
    pending_webhooks: u64,
}

impl Event {
    /// Stripe's Event object, with the deliveries still pending now.
    pub fn render(&self) -> Value {
        let mut value: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        value["pending_webhooks"] = json!(self.pending_webhooks);
        value
    }
}

/// How many events are kept. Stripe keeps 30 days of them; the simulator keeps the newest
/// this many, so that a long load test does not grow without bound (a few KB an event).
pub const KEPT: usize = 25_000;

/// The newest [`KEPT`] events in the order they happened, and the deliveries not yet handed
/// to the courier.
#[derive(Debug)]
pub struct Events {
    list: VecDeque<Event>,
    /// Event id → its sequence number; the front of `list` is number `first`.
    index: HashMap<String, u64>,
    first: u64,
    kept: usize,
    outbox: Vec<Delivery>,
}

impl Default for Events {
    fn default() -> Self {
        Events::keeping(KEPT)
    }
}

impl Events {
    pub fn keeping(kept: usize) -> Events {
        Events {
            list: VecDeque::new(),
            index: HashMap::new(),
            first: 0,
            kept: kept.max(1),
            outbox: Vec::new(),
        }
    }

    pub fn emit(
        &mut self,
        endpoints: &[Endpoint],
        created: i64,
        kind: &str,
        object: Value,
        previous_attributes: Option<Value>,
        request: &Request,
    ) {
        let id = new_id("evt");
        let targets: Vec<&Endpoint> = endpoints.iter().filter(|e| e.wants(kind)).collect();
        let mut data = json!({ "object": object });
        if let Some(previous) = previous_attributes {
            data["previous_attributes"] = previous;
        }
        let value = json!({
            "id": id, "object": "event", "api_version": API_VERSION, "created": created,
            "data": data, "livemode": false, "pending_webhooks": targets.len(),
            "request": {"id": request.id, "idempotency_key": request.idempotency_key},
            "type": kind,
        });
        // One body for every endpoint and every retry: Stripe redelivers the same bytes
        // (only the signature's timestamp changes).
        let body = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        for endpoint in &targets {
            self.outbox.push(endpoint.delivery(&id, body.clone()));
        }
        let event = Event {
            id,
            created,
            kind: kind.to_owned(),
            body,
            pending_webhooks: targets.len() as u64,
        };
        self.index
            .insert(event.id.clone(), self.first + self.list.len() as u64);
        self.list.push_back(event);
        while self.list.len() > self.kept {
            if let Some(old) = self.list.pop_front() {
                self.index.remove(&old.id);
            }
            self.first += 1;
        }
    }

    /// The deliveries queued since the last call, for the caller to start once the state
    /// lock is released.
    pub fn take_outbox(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.outbox)
    }

    /// One delivery of `id` was answered `2xx`.
    pub fn delivered(&mut self, id: &str) {
        if let Some(event) = self.position(id).and_then(|n| self.list.get_mut(n)) {
            event.pending_webhooks = event.pending_webhooks.saturating_sub(1);
        }
    }

    fn position(&self, id: &str) -> Option<usize> {
        let seq = self.index.get(id)?;
        usize::try_from(seq - self.first).ok()
    }

    pub fn get(&self, id: &str) -> Option<&Event> {
        self.position(id).and_then(|n| self.list.get(n))
    }

    pub fn newest_first(&self) -> impl Iterator<Item = &Event> {
        self.list.iter().rev()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_events_are_kept_and_found() {
        let mut events = Events::keeping(2);
        for kind in ["a", "b", "c"] {
            events.emit(&[], 1, kind, json!({}), None, &Request::default());
        }

        let kinds: Vec<&str> = events.newest_first().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["c", "b"]);
        let newest = events.newest_first().next().map(|e| e.id.clone());
        let newest = newest.expect("an event");
        assert_eq!(events.get(&newest).map(|e| e.kind.as_str()), Some("c"));
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn an_event_renders_as_stripe_s_event_object() {
        let mut events = Events::keeping(5);
        let request = Request {
            id: Some("req_1".into()),
            idempotency_key: Some("k".into()),
        };
        events.emit(
            &[],
            7,
            "invoice.paid",
            json!({"id": "in_1"}),
            None,
            &request,
        );

        let value = events.newest_first().next().expect("an event").render();
        assert_eq!(value["object"], "event");
        assert_eq!(value["type"], "invoice.paid");
        assert_eq!(value["created"], 7);
        assert_eq!(value["data"]["object"]["id"], "in_1");
        assert_eq!(value["request"]["idempotency_key"], "k");
        assert_eq!(value["pending_webhooks"], 0);
    }
}
