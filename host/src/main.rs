use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

// Every request allocates and frees a whole instance's worth of small host
// objects across threads; glibc's malloc was ~12% of a hello request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use edgeinfer::up::{UpOptions, up};

/// Serverless WebAssembly inference functions.
#[derive(Parser)]
#[command(name = "edgeinfer", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the app described by a Spin manifest.
    Up {
        /// The Spin manifest (v2).
        #[arg(long = "from", short = 'f', default_value = "spin.toml")]
        manifest: PathBuf,
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// Host settings; defaults to edgeinfer.toml beside the manifest, if present.
        #[arg(long)]
        runtime_config_file: Option<PathBuf>,
        /// Compiled components and other state; defaults to .edgeinfer beside the manifest.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Run the build commands first.
        #[arg(long)]
        build: bool,
    },
    /// Run each component's build command.
    Build {
        #[arg(long = "from", short = 'f', default_value = "spin.toml")]
        manifest: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDGEINFER_LOG")
                .unwrap_or_else(|_| "edgeinfer=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Up {
            manifest,
            listen,
            runtime_config_file,
            state_dir,
            build,
        } => runtime.block_on(up(UpOptions {
            manifest,
            listen,
            runtime_config: runtime_config_file,
            state_dir,
            build,
        })),
        Command::Build { manifest } => runtime.block_on(edgeinfer::up::build(&manifest)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
