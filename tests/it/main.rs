//! Integration tests: real servers on 127.0.0.1:0, in process.

mod budgets;
mod clients;
#[path = "../support/mod.rs"]
mod common;
mod config;
mod gateway;
mod hardening;
mod resilience;
mod sdk;
mod sim;
mod tls;
mod tus;
