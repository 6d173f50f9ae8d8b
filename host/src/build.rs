//! `edgeinfer build`: runs each component's `[component.X.build]` commands,
//! as `spin build` does.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::manifest::Manifest;

pub fn build_all(manifest: &Manifest) -> Result<()> {
    for (id, c) in &manifest.components {
        let Some(build) = &c.build else {
            tracing::info!(component = %id, "no build command");
            continue;
        };
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
        if !c.source.exists() {
            bail!(
                "building component `{id}` succeeded but its source {} does not exist",
                c.source.display()
            );
        }
    }
    Ok(())
}
