//! Portcullis: a self-hosted API security gateway.
//!
//! The library holds the whole gateway so tests and benchmarks can run it
//! in-process; the `portcullis` binary is a thin command-line edge over it.
//! ARCHITECTURE.md maps the modules to the request pipeline.

pub mod admin;
pub mod audit;
pub mod body;
pub mod compile;
pub mod config;
pub mod connection;
pub mod cookies;
pub mod demo;
pub mod enforce;
pub mod error;
pub mod keys;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod oidc;
pub mod pipeline;
pub mod policy;
pub mod principal;
pub mod ratelimit;
pub mod runtime;
pub mod server;
pub mod sessions;
pub mod stage;
pub mod store;
pub mod tls;
pub mod upstream;
pub mod users;
pub mod websocket;
pub mod worker;
pub mod x509;

pub use server::{Gateway, StartError};
