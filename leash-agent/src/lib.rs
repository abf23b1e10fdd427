//! Leash: an LLM security gateway. See ARCHITECTURE.md for how a request
//! flows through these modules.

pub mod admin;
pub mod app;
pub mod audit;
pub mod config;
pub mod metrics;
pub mod pipeline;
pub mod provider;
pub mod proxy;
pub mod server;
pub mod tls;
