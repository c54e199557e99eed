//! The shared broker conformance suite, run against a real nats-server per test.

mod common;

herald_core::broker_conformance_tests!(|limits| async move {
    common::ServerBroker::start(limits).await
});
