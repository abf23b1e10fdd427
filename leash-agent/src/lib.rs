//! Leash: an LLM security gateway. See ARCHITECTURE.md for how a request
//! flows through these modules.

pub mod admin;
pub mod alerts;
pub mod app;
pub mod audit;
pub mod ca;
pub mod capture;
pub mod cli;
pub mod collector;
pub mod config;
pub mod console;
pub mod credentials;
pub mod faults;
pub mod field;
pub mod hex;
pub mod intercept;
pub mod keys;
pub mod mcp;
pub mod metrics;
pub mod modules;
pub mod pipeline;
pub mod policy;
pub mod pricing;
pub mod provider;
pub mod proxy;
pub mod record;
pub mod routes;
pub mod server;
pub mod ship;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod translate;
pub mod trust;
pub mod upstream;
