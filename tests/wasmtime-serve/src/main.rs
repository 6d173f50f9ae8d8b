//! `wasmtime serve`, as wasmtime-cli 48 has it: its `serve` command, run
//! from its library. Only the top-level dispatch is here (the CLI's own
//! binary is not something cargo can build for a workspace), so the flags,
//! the server and the runtime are wasmtime's.

use clap::Parser;

#[derive(Parser)]
#[command(name = "wasmtime")]
enum Wasmtime {
    /// Serves requests from a wasi-http proxy component.
    Serve(wasmtime_cli::commands::ServeCommand),
}

fn main() -> wasmtime::Result<()> {
    match Wasmtime::parse() {
        Wasmtime::Serve(command) => command.execute(),
    }
}
