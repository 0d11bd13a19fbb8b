//! One integration-test binary: real RabbitMQ, real Redis, the app on a random port.

mod sim;
