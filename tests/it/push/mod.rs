//! The partner push (CONTRACT §10): configuration, signing, delivery, the partner calls.

pub mod bed;
mod calls;
mod config;
mod delivery;
pub mod signing;
