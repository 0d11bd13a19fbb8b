//! The partner push (CONTRACT §10): configuration, signing, delivery, the partner calls.

mod config;
pub mod signing;
