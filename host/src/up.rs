//! `edgeinfer up`: check the app, listen, compile, serve, drain on signal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::app::{App, Plan};
use crate::engine::{EpochClock, new_engine};
use crate::server::Server;

pub struct UpOptions {
    pub manifest: PathBuf,
    pub listen: SocketAddr,
    pub runtime_config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub build: bool,
}

pub async fn build(manifest: &Path) -> Result<()> {
    let plan = Plan::load(manifest, None)?;
    let state_dir = plan.state_dir(None)?;
    crate::build::build_all(&plan, &state_dir).await
}

pub async fn up(opts: UpOptions) -> Result<()> {
    let plan = Plan::load(&opts.manifest, opts.runtime_config.as_deref())?;
    let state_dir = plan.state_dir(opts.state_dir)?;
    if opts.build {
        crate::build::build_all(&plan, &state_dir).await?;
    }

    let engine = new_engine(&plan.pool_settings())?;
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

    let server = Server::new(local);
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
    serving.await.context("server task")?;
    eprintln!("edgeinfer: stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
