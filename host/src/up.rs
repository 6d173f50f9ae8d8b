//! `edgeinfer up`: check the app, listen, compile, serve, reload on change
//! or SIGHUP, drain on SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use tokio::signal::unix::{Signal, SignalKind, signal};
use wasmtime::Engine;

use crate::app::{App, Plan, runtime_config_path};
use crate::engine::{EpochClock, new_engine};
use crate::metering::Meter;
use crate::server::Server;

/// How often the files of the app are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// A change is acted on once the files have stayed the same this long, so a
/// file being written is not loaded half-way.
const WATCH_SETTLE: Duration = Duration::from_millis(200);

pub struct UpOptions {
    pub manifest: PathBuf,
    pub listen: SocketAddr,
    pub runtime_config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// The ledger and keys database; defaults to `edgeinfer.db` in the state dir.
    pub db: Option<PathBuf>,
    pub build: bool,
}

/// The ledger and key ring of this host: `db`, else `edgeinfer.db` in the state dir.
fn open_meter(plan: &Plan, state_dir: &Path, db: Option<&Path>) -> Result<Meter> {
    let db = db.map_or_else(|| crate::ledger::default_path(state_dir), Path::to_path_buf);
    let settings = &plan.runtime.metering;
    let ledger: Option<Arc<dyn crate::ledger::Ledger>> = if settings.enabled {
        Some(Arc::new(crate::ledger::SqliteLedger::open(&db)?))
    } else {
        None
    };
    let node = settings.node.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    });
    tracing::info!(db = %db.display(), metering = settings.enabled, fuel = plan.runtime.counts_fuel(), %node, "ledger");
    Ok(Meter {
        node,
        ledger,
        keys: crate::tenants::KeyRing::open(&db)?,
    })
}

pub async fn build(manifest: &Path) -> Result<()> {
    let plan = Plan::load(manifest, None)?;
    let state_dir = plan.state_dir(None)?;
    crate::build::build_all(&plan, &state_dir).await
}

pub async fn up(opts: UpOptions) -> Result<()> {
    // Before anything slow, so an early SIGHUP cannot kill the host.
    let hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let plan = Plan::load(&opts.manifest, opts.runtime_config.as_deref())?;
    let state_dir = plan.state_dir(opts.state_dir)?;
    if opts.build {
        crate::build::build_all(&plan, &state_dir).await?;
    }

    let pool = plan.pool_settings();
    let engine = new_engine(&pool, plan.runtime.counts_fuel())?;
    let meter = Arc::new(open_meter(&plan, &state_dir, opts.db.as_deref())?);
    let _epochs = EpochClock::start(engine.clone());
    let drain = plan
        .manifest
        .components
        .keys()
        .map(|id| plan.runtime.settings(id).limits().timeout)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(1);

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let local = listener.local_addr()?;
    // Scripts and tests read this line to find an ephemeral port.
    eprintln!("edgeinfer: serving http://{local}");

    let server = Server::new(local, meter);
    let mut reloader = Reloader {
        server: server.clone(),
        engine: engine.clone(),
        manifest: opts.manifest.clone(),
        runtime_config: opts.runtime_config.clone(),
        state_dir: state_dir.clone(),
        pool_memory_bytes: pool.max_memory_bytes,
        fuel: plan.runtime.counts_fuel(),
        watched: watch_list(&plan, opts.runtime_config.as_deref()),
    };
    // Changes made while the app loads are picked up by the first poll.
    let loaded_stamps = stamps(&reloader.watched);
    let loading = tokio::task::spawn_blocking({
        let engine = engine.clone();
        move || App::load(plan, &engine, &state_dir)
    });
    let serving = tokio::spawn(server.clone().run(listener, shutdown_signal(), drain));
    let app = loading.await.context("loading task")??;
    eprintln!(
        "edgeinfer: ready: {} component(s) of `{}`",
        app.components.len(),
        app.name
    );
    server.set_app(app);
    let reloading = tokio::spawn(async move { reloader.run(hangup, loaded_stamps).await });
    serving.await.context("server task")?;
    reloading.abort();
    eprintln!("edgeinfer: stopped");
    Ok(())
}

/// Hot reload: on SIGHUP, or when spin.toml, edgeinfer.toml or a component's
/// file changes, a new app is loaded off the request path and swapped in.
/// Calls in flight finish on the old app; a reload that fails leaves the old
/// app serving and logs why.
struct Reloader {
    server: Arc<Server>,
    engine: Engine,
    manifest: PathBuf,
    runtime_config: Option<PathBuf>,
    state_dir: PathBuf,
    /// The pool was sized for this much memory per instance at start.
    pool_memory_bytes: u64,
    /// Whether the engine counts fuel (fixed at start).
    fuel: bool,
    watched: Vec<PathBuf>,
}

/// Size and modification time of a file, `None` if it is missing.
type Stamps = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn stamps(paths: &[PathBuf]) -> Stamps {
    paths
        .iter()
        .map(|p| {
            let stamp = std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            (p.clone(), stamp)
        })
        .collect()
}

/// The files whose change reloads the app: the manifest, every place the
/// runtime config may be read from, and each component's file.
fn watch_list(plan: &Plan, runtime_config: Option<&Path>) -> Vec<PathBuf> {
    let mut paths = vec![plan.manifest.path.clone()];
    match runtime_config {
        Some(p) => paths.push(p.to_path_buf()),
        None => {
            paths.push(PathBuf::from("edgeinfer.toml"));
            paths.push(runtime_config_path(&plan.manifest.dir, None).0);
            paths.push(plan.manifest.dir.join("edgeinfer.toml"));
        }
    }
    paths.extend(plan.manifest.components.values().map(|c| c.source.clone()));
    paths.sort();
    paths.dedup();
    paths
}

impl Reloader {
    async fn run(&mut self, mut hangup: Signal, initial: Stamps) {
        let mut seen = initial;
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = hangup.recv() => "SIGHUP",
                _ = tick.tick() => {
                    let now = stamps(&self.watched);
                    if now == seen {
                        continue;
                    }
                    tokio::time::sleep(WATCH_SETTLE).await;
                    if stamps(&self.watched) != now {
                        continue; // still being written; look again next tick
                    }
                    "a file of the app changed"
                }
            };
            // Taken before loading, so a change made during the load is seen next time.
            let before = stamps(&self.watched);
            match self.reload().await {
                Ok((watched, components)) => {
                    self.watched = watched;
                    let mut after = stamps(&self.watched);
                    for (path, stamp) in &mut after {
                        if let Some((_, old)) = before.iter().find(|(p, _)| p == path) {
                            *stamp = *old;
                        }
                    }
                    seen = after;
                    crate::metrics::global().record_reload(true);
                    tracing::info!(trigger = why, components, "app reloaded");
                }
                Err(e) => {
                    seen = before;
                    crate::metrics::global().record_reload(false);
                    tracing::error!(
                        trigger = why,
                        error = format!("{e:#}"),
                        "reload failed; still serving the previous app"
                    );
                }
            }
        }
    }

    /// Loads the app again and swaps it in; returns the files to watch now
    /// and how many components the new app has.
    async fn reload(&self) -> Result<(Vec<PathBuf>, usize)> {
        let previous = self.server.app();
        let (manifest, runtime_config) = (self.manifest.clone(), self.runtime_config.clone());
        let (engine, state_dir) = (self.engine.clone(), self.state_dir.clone());
        let pool_memory_bytes = self.pool_memory_bytes;
        let fuel = self.fuel;
        let (app, watched) = tokio::task::spawn_blocking(move || {
            let plan = Plan::load(&manifest, runtime_config.as_deref())?;
            let needed = plan.pool_settings().max_memory_bytes;
            if needed > pool_memory_bytes {
                bail!(
                    "max_memory_mb asks for {} MiB per instance, more than the {} MiB the \
                     running instance pool was sized for; restart edgeinfer to apply it",
                    needed >> 20,
                    pool_memory_bytes >> 20
                );
            }
            if plan.runtime.counts_fuel() != fuel {
                tracing::warn!("whether fuel is counted changed ([metering] fuel, or fuel pricing); it takes effect when edgeinfer restarts");
            }
            let watched = watch_list(&plan, runtime_config.as_deref());
            let app = App::load_after(plan, &engine, &state_dir, previous.as_deref())?;
            Ok((app, watched))
        })
        .await
        .context("reload task")??;
        let components = app.components.len();
        // The old app goes once its last call in flight is done.
        drop(self.server.set_app(app));
        Ok((watched, components))
    }
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
