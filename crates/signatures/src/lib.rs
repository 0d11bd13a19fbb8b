//! The signatures the service checks and its clients make: the partner sign ([`partner`],
//! docs/partners.md#the-sign), Stripe's webhook signature ([`stripe`], docs/partners.md#stripes-webhooks) and the partner push's
//! Standard Webhooks signature ([`push`], docs/partners.md#what-arrives).
//!
//! A crate of its own so that loadgen, a client of the service, signs as the service checks
//! without depending on the service crate (docs/design.md, "Crates"). The service re-exports
//! both where its code has always found them: `autorenew::domain::sign` and
//! `autorenew::domain::webhook::{sign, SIGNATURE_HEADER}`. The Stripe simulator signs its
//! deliveries with code of its own, on purpose.

pub mod partner;
pub mod push;
pub mod stripe;
