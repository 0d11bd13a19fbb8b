//! The partner push (docs/partners.md#the-push-signed-notifications-to-your-url): configuration, signing, delivery, the partner calls.

mod calls;
mod config;
pub mod delivery;
mod end_to_end;
mod load;
pub mod signing;
mod twins;
