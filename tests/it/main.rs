//! One integration-test binary: real RabbitMQ, real Redis, the app on a random port.

mod addresses;
mod events_command;
mod harness;
mod helpers;
mod hostile;
mod intake;
mod loadgen;
mod logs;
mod memory_twins;
mod openapi;
mod probe;
mod push;
mod run_command;
mod settings;
mod sign_vectors;
mod sim;
mod worker;

/// The binary's wiring of the simulator and loadgen to the service (`run`'s simulator, loadgen's
/// defaults), compiled here too so the tests start what `autorenew` starts.
#[path = "../../src/wiring.rs"]
mod wiring;
