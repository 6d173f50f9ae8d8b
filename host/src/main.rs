use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use edgeinfer::up::{UpOptions, up};

// Every request allocates and frees a whole instance's worth of small host
// objects across threads; glibc's malloc was ~12% of a hello request. The
// crate builds mimalloc v3, which returns freed memory to the OS only after
// a second; at v2's 10 ms a model run through wasi:nn faulted its scratch
// in again on every call (README, "The allocator's purge delay"). Model
// loads get a heap of their own (see `model_heap`).
#[global_allocator]
static GLOBAL: edgeinfer::model_heap::Allocator = edgeinfer::model_heap::Allocator;

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
        #[command(flatten)]
        db: DbArgs,
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
    /// Manage tenants.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
        #[arg(long, default_value = ".edgeinfer", global = true)]
        state_dir: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Manage API keys. Once any key exists, app routes require one.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[arg(long, default_value = ".edgeinfer", global = true)]
        state_dir: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Billing reports and meter records from the ledger.
    Billing {
        #[command(subcommand)]
        command: BillingCommand,
        #[arg(long, default_value = ".edgeinfer", global = true)]
        state_dir: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Time a model natively, in the sandbox (warm) and from a fresh instance (cold).
    Bench(edgeinfer::bench::BenchOptions),
}

/// Where tenants, keys and the ledger live.
#[derive(clap::Args)]
struct DbArgs {
    /// The database; defaults to edgeinfer.db in the state dir.
    #[arg(long, env = "EDGEINFER_DB", global = true)]
    db: Option<PathBuf>,
}

impl DbArgs {
    fn path(&self, state_dir: &std::path::Path) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(|| edgeinfer::ledger::default_path(state_dir))
    }

    fn open(&self, state_dir: &std::path::Path) -> anyhow::Result<rusqlite::Connection> {
        edgeinfer::ledger::open(&self.path(state_dir))
    }
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// Add a tenant, optionally with quotas.
    Create {
        name: String,
        /// Calls per minute at most; more get 429.
        #[arg(long)]
        requests_per_minute: Option<u32>,
        /// Spend per calendar month (UTC) at most, in the billing currency.
        #[arg(long)]
        monthly_cap: Option<rust_decimal::Decimal>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// A new API key; the key is printed once, as the last line.
    Create {
        #[arg(long)]
        tenant: String,
        /// Limit the key to these components (repeat); default: all.
        #[arg(long = "component")]
        components: Vec<String>,
    },
    Revoke {
        key_id: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Csv,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EventsFormat {
    /// One meter record per line.
    Jsonl,
    /// CloudEvents 1.0, one per line (what OpenMeter ingests).
    Cloudevents,
}

#[derive(Subcommand)]
enum BillingCommand {
    /// Line items per tenant, component and model over [from, to), with a total.
    Report {
        /// A date (2026-11-01, UTC) or RFC 3339 timestamp.
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value = "csv")]
        format: ReportFormat,
    },
    /// Every meter record, oldest first.
    Events {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: EventsFormat,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Serve an ONNX model over the Open Inference Protocol, with no code.
    Add(edgeinfer::models::AddOptions),
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
            db,
        } => runtime.block_on(up(UpOptions {
            manifest,
            listen,
            runtime_config: runtime_config_file,
            state_dir,
            db: db.db,
            build,
        })),
        Command::Tenants {
            command,
            state_dir,
            db,
        } => tenants(command, &db, &state_dir),
        Command::Keys {
            command,
            state_dir,
            db,
        } => keys(command, &db, &state_dir),
        Command::Billing {
            command,
            state_dir,
            db,
        } => billing(command, &db, &state_dir),
        Command::Build { manifest } => runtime.block_on(edgeinfer::up::build(&manifest)),
        Command::Models {
            command: ModelsCommand::Add(opts),
        } => edgeinfer::models::add(&opts),
        Command::Bench(opts) => edgeinfer::bench::bench(&opts, &runtime),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn tenants(
    command: TenantsCommand,
    db: &DbArgs,
    state_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let conn = db.open(state_dir)?;
    match command {
        TenantsCommand::Create {
            name,
            requests_per_minute,
            monthly_cap,
        } => {
            edgeinfer::tenants::create_tenant(
                &conn,
                &name,
                &edgeinfer::tenants::TenantLimits {
                    requests_per_minute,
                    monthly_cap,
                },
            )?;
            println!("created tenant {name}");
        }
    }
    Ok(())
}

fn keys(command: KeysCommand, db: &DbArgs, state_dir: &std::path::Path) -> anyhow::Result<()> {
    let conn = db.open(state_dir)?;
    match command {
        KeysCommand::Create { tenant, components } => {
            let (id, key) = edgeinfer::tenants::create_key(&conn, &tenant, &components)?;
            println!("key id {id} for tenant {tenant}; the key is shown only this once:");
            println!("{key}");
        }
        KeysCommand::Revoke { key_id } => {
            edgeinfer::tenants::revoke_key(&conn, &key_id)?;
            println!("revoked {key_id}");
        }
        KeysCommand::List { json } => {
            let keys = edgeinfer::tenants::list_keys(&conn)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<14} {:<20} {:<24} {:<30} components",
                    "id", "tenant", "created", "revoked"
                );
                for k in keys {
                    println!(
                        "{:<14} {:<20} {:<24} {:<30} {}",
                        k.id,
                        k.tenant,
                        &k.created_at[..k.created_at.len().min(24)],
                        k.revoked_at.as_deref().unwrap_or("-"),
                        k.components.map_or("*".into(), |c| c.join(","))
                    );
                }
            }
        }
    }
    Ok(())
}

fn billing(
    command: BillingCommand,
    db: &DbArgs,
    state_dir: &std::path::Path,
) -> anyhow::Result<()> {
    use edgeinfer::billing::parse_when;
    use std::io::Write as _;
    let conn = db.open(state_dir)?;
    let mut out = std::io::stdout().lock();
    match command {
        BillingCommand::Report {
            from,
            to,
            tenant,
            format,
        } => {
            let query = edgeinfer::ledger::Query {
                from_us: Some(parse_when(&from)?),
                to_us: Some(parse_when(&to)?),
                tenant,
            };
            let records = edgeinfer::ledger::read_records(&conn, &query)?;
            let report = edgeinfer::billing::report(&records, from, to);
            match format {
                ReportFormat::Csv => report.write_csv(&mut out)?,
                ReportFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
            }
        }
        BillingCommand::Events {
            tenant,
            from,
            to,
            format,
        } => {
            let query = edgeinfer::ledger::Query {
                from_us: from.as_deref().map(parse_when).transpose()?,
                to_us: to.as_deref().map(parse_when).transpose()?,
                tenant,
            };
            for r in edgeinfer::ledger::read_records(&conn, &query)? {
                let line = match format {
                    EventsFormat::Jsonl => serde_json::to_string(&r)?,
                    EventsFormat::Cloudevents => edgeinfer::billing::cloud_event(&r).to_string(),
                };
                writeln!(out, "{line}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
