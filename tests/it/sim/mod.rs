//! Tests of the Stripe simulator.
