//! Test support for Leash's end-to-end tests: a mock provider and a harness
//! that runs the real `leash` binary, curl and the official Python SDKs.
#![allow(
    clippy::missing_panics_doc,
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test support: a failed expectation is a failed test"
)]

pub mod agent;
pub mod browser;
pub mod dns;
pub mod fleet;
pub mod gateway;
pub mod handover;
pub mod harness;
pub mod http;
pub mod mock;
pub mod otlp;
pub mod pdf;
pub mod results;
pub mod tls;
pub mod world;
