//! The domain: the sign, the requests and their validation, amounts, the job and its result,
//! Stripe's webhook signature, cancels and the state of an auto-renewal.
//! Pure types and functions: no I/O, no tokio, no HTTP; [`clock`] alone reads the wall clock.

pub mod authorization;
pub mod cancel;
pub mod clock;
pub mod event;
pub mod failure_mark;
pub mod fields;
pub mod job;
pub mod money;
pub mod outcome;
pub mod push;
pub mod push_calls;
pub mod renewal;
pub mod request;
pub mod webhook;

/// The partner sign: the `signatures` crate's, which loadgen shares (docs/design.md, "Crates").
pub use signatures::partner as sign;

pub use event::ResultEvent;
pub use fields::{FieldError, SignedFields};
pub use job::Job;
pub use outcome::{FailureCode, FailureDetail, FinalResult};
pub use request::{PartnerCode, PayId, PayKey, ResultQuery, SubscriptionRequest};
