//! The partner push (CONTRACT §10): configuration, signing, delivery, the partner calls.

pub mod bed;
mod calls;
mod config;
pub mod delivery;
mod end_to_end;
mod load;
pub mod signing;
mod twins;
