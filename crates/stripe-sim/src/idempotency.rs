//! `Idempotency-Key` as Stripe does it, for POST requests:
//! - the same key with the same endpoint and parameters replays the saved answer with
//!   `Idempotent-Replayed: true`; parameters are compared decoded, so their order is free;
//! - the same key with other parameters is a 400 `idempotency_error`, with another endpoint too;
//! - the same key while its first request is still running is a 409 (retry later);
//! - nothing is saved when the endpoint never started: validation errors, 429s, injected
//!   500s before execution, 409s. Those can be retried with the same key;
//! - a 500 of an endpoint that started is saved like any answer (the `saved_error` fault), so
//!   retries with that key get the same 500; only a new key executes again.
//!
//! Keys are scoped to the API key, as Stripe scopes them to the account. Stripe forgets keys
//! after 24 hours; the simulator keeps them until `/_sim/reset`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::StatusCode;

use super::errors::ApiError;
use super::form::Params;

/// An answer as it went out, to be replayed byte for byte.
#[derive(Debug, Clone)]
pub struct Saved {
    pub status: StatusCode,
    pub body: Bytes,
    pub should_retry: Option<bool>,
}

#[derive(Debug)]
enum State {
    InFlight,
    Done(Saved),
}

#[derive(Debug)]
struct Entry {
    endpoint: &'static str,
    params: Params,
    state: State,
}

#[derive(Debug, Default)]
pub struct Keys {
    entries: HashMap<(String, String), Entry>,
    pub replays: u64,
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Claim {
    /// First use: run it; the key is now in flight.
    Run,
    Replay(Saved),
    Reject(ApiError),
}

impl Keys {
    pub fn claim(
        &mut self,
        api_key: &str,
        key: &str,
        endpoint: &'static str,
        params: &Params,
    ) -> Claim {
        let id = (api_key.to_owned(), key.to_owned());
        match self.entries.get(&id) {
            None => {
                self.entries.insert(
                    id,
                    Entry {
                        endpoint,
                        params: params.clone(),
                        state: State::InFlight,
                    },
                );
                Claim::Run
            }
            Some(entry) if entry.endpoint != endpoint => {
                Claim::Reject(ApiError::idempotency_other_endpoint(key))
            }
            Some(entry) if entry.params != *params => {
                Claim::Reject(ApiError::idempotency_mismatch(key))
            }
            Some(Entry {
                state: State::InFlight,
                ..
            }) => Claim::Reject(ApiError::idempotency_in_flight()),
            Some(Entry {
                state: State::Done(saved),
                ..
            }) => {
                self.replays += 1;
                Claim::Replay(saved.clone())
            }
        }
    }

    /// Saves the answer of a claimed key.
    pub fn finish(&mut self, api_key: &str, key: &str, saved: Saved) {
        if let Some(entry) = self.entries.get_mut(&(api_key.to_owned(), key.to_owned())) {
            entry.state = State::Done(saved);
        }
    }

    /// Frees a claimed key whose request never started executing.
    pub fn release(&mut self, api_key: &str, key: &str) {
        self.entries.remove(&(api_key.to_owned(), key.to_owned()));
    }

    pub fn count(&self) -> usize {
        self.entries.len()
    }

    pub fn in_flight(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.state, State::InFlight))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(s: &str) -> Params {
        Params::parse(s.as_bytes()).expect("parses")
    }

    fn saved() -> Saved {
        Saved {
            status: StatusCode::OK,
            body: Bytes::from_static(b"{}"),
            should_retry: None,
        }
    }

    #[test]
    fn a_key_in_flight_is_refused_until_it_finishes_then_replayed() {
        let mut keys = Keys::default();
        let p = params("email=a@b.c");
        assert!(matches!(
            keys.claim("sk", "k", "POST /v1/customers", &p),
            Claim::Run
        ));
        let Claim::Reject(error) = keys.claim("sk", "k", "POST /v1/customers", &p) else {
            panic!("expected a 409 while in flight");
        };
        assert_eq!(error.status, StatusCode::CONFLICT);
        keys.finish("sk", "k", saved());
        assert!(matches!(
            keys.claim("sk", "k", "POST /v1/customers", &p),
            Claim::Replay(_)
        ));
        assert_eq!(keys.replays, 1);
    }

    #[test]
    fn keys_of_different_api_keys_do_not_meet() {
        let mut keys = Keys::default();
        let p = params("email=a@b.c");
        assert!(matches!(
            keys.claim("sk_a", "k", "POST /v1/customers", &p),
            Claim::Run
        ));
        assert!(matches!(
            keys.claim("sk_b", "k", "POST /v1/customers", &p),
            Claim::Run
        ));
    }

    #[test]
    fn a_released_key_can_run_again_with_other_parameters() {
        let mut keys = Keys::default();
        assert!(matches!(
            keys.claim("sk", "k", "POST /v1/customers", &params("a=1")),
            Claim::Run
        ));
        keys.release("sk", "k");
        assert!(matches!(
            keys.claim("sk", "k", "POST /v1/customers", &params("a=2")),
            Claim::Run
        ));
    }
}
