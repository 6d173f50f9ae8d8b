//! edgeinfer: serverless WebAssembly inference functions on wasmtime.
//!
//! Layers, outermost first: `server` (HTTP, routing, errors, `/metrics`) →
//! `admission` (per-component concurrency and queue) → `invoke`
//! (instance per request, deadlines, run on one of the `cores`) → `sandbox`
//! (capabilities a guest may import) → `engine` (wasmtime engine, compile
//! cache). `manifest`, `runtime_config` and `variables` read the app; `app`
//! ties them together.
//! `metering` records every call in the `ledger`; `tenants` checks API keys
//! and quotas; `billing` prices calls and writes reports.

pub mod admission;
pub mod app;
pub mod bake;
pub mod bench;
pub mod billing;
pub mod build;
pub mod cores;
pub mod engine;
pub mod guest_stderr;
pub mod invoke;
pub mod ledger;
pub mod manifest;
pub mod metering;
pub mod metrics;
pub mod model_heap;
pub mod models;
pub mod nn;
pub mod outbound;
pub mod routes;
pub mod runtime_config;
pub mod sandbox;
pub mod server;
pub mod tenants;
pub mod toml_file;
pub mod up;
pub mod variables;
