//! Stripe's events: a record of what happened, newest last, for `GET /v1/events` and for the
//! webhook deliveries queued when one is recorded.
//!
//! An event's `data.object` is a snapshot taken when it happened, as Stripe's is: a later
//! change to the object does not change the event.

use std::collections::HashMap;

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

#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub created: i64,
    pub kind: String,
    pub object: Value,
    pub previous_attributes: Option<Value>,
    pub request: Request,
    /// Deliveries not yet answered `2xx`, as Stripe counts them.
    pub pending_webhooks: u64,
}

/// Every event, in the order they happened, and the deliveries not yet handed to the courier.
#[derive(Debug, Default)]
pub struct Events {
    list: Vec<Event>,
    index: HashMap<String, usize>,
    outbox: Vec<Delivery>,
}

impl Events {
    pub fn emit(
        &mut self,
        endpoints: &[Endpoint],
        created: i64,
        kind: &str,
        object: Value,
        previous_attributes: Option<Value>,
        request: &Request,
    ) {
        let targets: Vec<&Endpoint> = endpoints.iter().filter(|e| e.wants(kind)).collect();
        let event = Event {
            id: new_id("evt"),
            created,
            kind: kind.to_owned(),
            object,
            previous_attributes,
            request: request.clone(),
            pending_webhooks: targets.len() as u64,
        };
        if !targets.is_empty() {
            // One body for every endpoint and every retry: Stripe redelivers the same bytes
            // (only the signature's timestamp changes).
            let body = Bytes::from(serde_json::to_vec(&render(&event)).unwrap_or_default());
            for endpoint in targets {
                self.outbox.push(endpoint.delivery(&event.id, body.clone()));
            }
        }
        self.index.insert(event.id.clone(), self.list.len());
        self.list.push(event);
    }

    /// The deliveries queued since the last call, for the caller to start once the state
    /// lock is released.
    pub fn take_outbox(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.outbox)
    }

    /// One delivery of `id` was answered `2xx`.
    pub fn delivered(&mut self, id: &str) {
        if let Some(event) = self.index.get(id).and_then(|&n| self.list.get_mut(n)) {
            event.pending_webhooks = event.pending_webhooks.saturating_sub(1);
        }
    }

    pub fn get(&self, id: &str) -> Option<&Event> {
        self.index.get(id).and_then(|&n| self.list.get(n))
    }

    pub fn newest_first(&self) -> impl Iterator<Item = &Event> {
        self.list.iter().rev()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }
}

/// Stripe's Event object.
pub fn render(event: &Event) -> Value {
    let mut data = json!({ "object": event.object });
    if let Some(previous) = &event.previous_attributes {
        data["previous_attributes"] = previous.clone();
    }
    json!({
        "id": event.id, "object": "event", "api_version": API_VERSION,
        "created": event.created, "data": data, "livemode": false,
        "pending_webhooks": event.pending_webhooks,
        "request": {"id": event.request.id, "idempotency_key": event.request.idempotency_key},
        "type": event.kind,
    })
}
