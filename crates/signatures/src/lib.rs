//! The signatures the service checks and its clients make: the partner sign ([`partner`],
//! CONTRACT §3), Stripe's webhook signature ([`stripe`], CONTRACT §9.1) and the partner push's
//! Standard Webhooks signature ([`push`], CONTRACT §10.1).
//!
//! A crate of its own so that loadgen, a client of the service, signs as the service checks
//! without depending on the service crate (docs/design.md, "Crates"). The service re-exports
//! both where its code has always found them: `autorenew::domain::sign` and
//! `autorenew::domain::webhook::{sign, SIGNATURE_HEADER}`. The Stripe simulator signs its
//! deliveries with code of its own, on purpose.

pub mod partner;
pub mod push;
pub mod stripe;
