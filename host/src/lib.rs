//! edgeinfer: serverless WebAssembly inference functions on wasmtime.
//!
//! Layers, outermost first: `server` (HTTP, routing, errors, `/metrics`) →
//! `admission` (per-component concurrency and queue) → `invoke`
//! (instance per request, deadlines) → `sandbox` (capabilities a guest may
//! import) → `engine` (wasmtime engine, compile cache). `manifest`,
//! `runtime_config` and `variables` read the app; `app` ties them together.

pub mod admission;
pub mod app;
pub mod bake;
pub mod bench;
pub mod build;
pub mod engine;
pub mod invoke;
pub mod manifest;
pub mod metrics;
pub mod models;
pub mod outbound;
pub mod routes;
pub mod runtime_config;
pub mod sandbox;
pub mod server;
pub mod toml_file;
pub mod up;
pub mod variables;
