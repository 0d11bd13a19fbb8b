//! The domain's pure parts under fuzzing: the sign, the strict field reading, the two requests
//! and amounts, compiled from the main crate's own files (the sign from the `signatures` crate,
//! whose `partner` module the service's `domain::sign` is). The domain does no I/O and uses only
//! its siblings (`super::…`), so it builds alone; the fuzz build then instruments these four
//! files and a few small crates instead of tokio, lapin, redis and the Stripe client, which
//! keeps a build short enough for CI.

#[path = "../../src/domain/fields.rs"]
pub mod fields;
#[path = "../../src/domain/money.rs"]
pub mod money;
#[path = "../../src/domain/request.rs"]
pub mod request;
#[path = "../../crates/signatures/src/partner.rs"]
pub mod sign;
