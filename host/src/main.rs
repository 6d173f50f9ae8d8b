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
    /// Run each component's build command, then bake the components that ask for it.
    Build {
        #[arg(long = "from", short = 'f', default_value = "spin.toml")]
        manifest: PathBuf,
    },
    /// Manage the app's models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Time a model natively, in the sandbox (warm) and from a fresh instance (cold).
    Bench {
        /// The .onnx file.
        model: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// An OIP inference request body to send (default: synthetic inputs).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Sizes for an input's dynamic dims, e.g. `x=1,3,48,192` (others are 1).
        #[arg(long = "shape")]
        shapes: Vec<String>,
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// The generic function, built by `cargo build --release -p oip` in functions/.
        #[arg(long, default_value = "target/wasm/wasm32-wasip2/release/oip.wasm")]
        component: PathBuf,
        #[arg(long, default_value = ".edgeinfer")]
        state_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Serve an ONNX model over the Open Inference Protocol, with no code.
    Add {
        /// Model name, used in /v2/models/NAME and as the component id.
        name: String,
        /// The .onnx file; it is copied to models/NAME/.
        file: PathBuf,
        /// Where inference runs.
        #[arg(long, value_enum, default_value = "tract")]
        engine: edgeinfer::runtime_config::Engine,
        /// An input shape to plan at build time, e.g. `x=1,3,48,192` (one per input).
        #[arg(long = "shape")]
        shapes: Vec<String>,
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
        Command::Models {
            command:
                ModelsCommand::Add {
                    name,
                    file,
                    engine,
                    shapes,
                    manifest,
                },
        } => edgeinfer::models::add(&edgeinfer::models::AddOptions {
            name,
            file,
            engine,
            shapes,
            manifest,
        }),
        Command::Bench {
            model,
            json,
            input,
            shapes,
            iterations,
            component,
            state_dir,
        } => runtime.block_on(edgeinfer::bench::bench(&edgeinfer::bench::BenchOptions {
            model,
            input,
            shapes,
            iterations,
            component,
            state_dir,
            json,
        })),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
