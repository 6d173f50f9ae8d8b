//! `edgeinfer build`: runs each component's `[component.X.build]` commands,
//! as `spin build` does, then bakes the components that ask for it
//! (`[component.X.tool.edgeinfer] bake = "built.wasm"`).

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::app::Plan;

pub async fn build_all(plan: &Plan, state_dir: &Path) -> Result<()> {
    let manifest = &plan.manifest;
    for (id, c) in &manifest.components {
        let Some(build) = &c.build else { continue };
        let workdir = match &build.workdir {
            Some(w) => manifest.dir.join(w),
            None => manifest.dir.clone(),
        };
        for command in build.command.as_slice() {
            eprintln!("Building component {id} with `{command}`");
            let status = Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(&workdir)
                .status()
                .with_context(|| format!("starting the build of component `{id}`"))?;
            if !status.success() {
                bail!("building component `{id}`: `{command}` failed ({status})");
            }
        }
    }

    let mut baker = None;
    for (id, c) in &manifest.components {
        let Some(input) = &c.bake_from else { continue };
        // Served as its wasi:nn build, which carries no model to bake.
        if plan.serves_wasi_nn(id) {
            continue;
        }
        let baker = match &mut baker {
            Some(b) => b,
            None => baker.insert(crate::bake::Baker::new(state_dir)?),
        };
        let limits = plan.runtime.settings(id).limits();
        let mut staged = Vec::new();
        let caps = plan
            .capabilities(c, &limits, state_dir, &mut staged)
            .with_context(|| format!("component `{id}`"))?;
        let (started, hits) = (std::time::Instant::now(), baker.cache_hits());
        let baked = crate::bake::bake(baker, &caps, input, &c.source)
            .await
            .with_context(|| format!("baking component `{id}`"))?;
        if baked {
            let cached = if baker.cache_hits() > hits {
                " (its code from the cache)"
            } else {
                ""
            };
            eprintln!(
                "Baked component {id} into {} in {:.1}s{cached}",
                c.source.display(),
                started.elapsed().as_secs_f64()
            );
        }
    }

    for (id, c) in &manifest.components {
        let source = plan.served_source(id, c)?;
        if c.build.is_some() && !source.exists() {
            bail!(
                "building component `{id}` succeeded but its source {} does not exist",
                source.display()
            );
        }
    }
    Ok(())
}
