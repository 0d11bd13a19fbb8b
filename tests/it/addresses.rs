//! A server whose address is taken (a second worker or intake on one host) says which address,
//! which setting chose it, and how to choose another.

use stripe_sim::{Application as Sim, SimSettings};

use crate::helpers::{SHARED_AMQP, SHARED_REDIS, test_settings};

fn taken() -> (std::net::TcpListener, String) {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = holder.local_addr().expect("address").to_string();
    (holder, address)
}

#[tokio::test]
async fn a_second_worker_on_one_host_names_the_address_and_worker_listen() {
    let (_holder, address) = taken();
    let mut settings = test_settings(SHARED_AMQP, SHARED_REDIS);
    settings.stripe.secret_key = "sk_test_x".to_owned().into();
    settings.stripe.api_base = "http://127.0.0.1:9".into();
    settings.worker.listen = address.clone();

    let error = autorenew::worker::Application::build(&settings)
        .await
        .err()
        .expect("the address is taken");

    let message = format!("{error:#}");
    assert!(message.contains(&address), "{message}");
    assert!(message.contains("`worker.listen`"), "{message}");
    assert!(
        message.contains("AUTORENEW__WORKER__LISTEN=127.0.0.1:0"),
        "{message}"
    );
    assert!(message.contains("Address already in use"), "{message}");
}

#[tokio::test]
async fn a_second_intake_on_one_host_names_the_address_and_intake_listen() {
    let (_holder, address) = taken();
    let mut settings = test_settings(SHARED_AMQP, SHARED_REDIS);
    settings.intake.listen = address.clone();

    let error = autorenew::intake::Application::build(&settings, Default::default())
        .await
        .err()
        .expect("the address is taken");

    let message = format!("{error:#}");
    assert!(message.contains(&address), "{message}");
    assert!(message.contains("`intake.listen`"), "{message}");
    assert!(message.contains("AUTORENEW__INTAKE__LISTEN="), "{message}");
}

#[test]
fn a_second_simulator_names_the_address_and_its_flag() {
    let (_holder, address) = taken();
    let settings = SimSettings {
        listen: address.parse().expect("address"),
        ..SimSettings::laptop()
    };

    let error = Sim::build(settings).err().expect("the address is taken");

    let message = format!("{error:#}");
    assert!(message.contains(&address), "{message}");
    assert!(message.contains("--sim-listen"), "{message}");
    assert!(message.contains("--listen 127.0.0.1:"), "{message}");
}
