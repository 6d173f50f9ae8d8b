//! `edgeinfer models add`: serve an ONNX file over the Open Inference
//! Protocol with no code, by adding a component of the generic `oip` function
//! to spin.toml. A model tract cannot run is refused here, naming the
//! operator, instead of failing at its first request.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::manifest::Manifest;
use crate::runtime_config::Engine;

pub struct AddOptions {
    pub name: String,
    pub file: PathBuf,
    pub engine: Engine,
    /// `NAME=D,D,...` per input: shapes planned at build time (models whose
    /// graphs tract plans per concrete shape then serve these cold).
    pub shapes: Vec<String>,
    pub manifest: PathBuf,
}

/// The generic function every added model runs in.
const GENERIC_CRATE: &str = "oip";

pub fn add(opts: &AddOptions) -> Result<()> {
    check_name(&opts.name)?;
    if opts.engine == Engine::WasiNn {
        bail!("the wasi-nn engine is not available in this build yet; use --engine tract");
    }
    let manifest = Manifest::load(&opts.manifest)?;
    if manifest.components.contains_key(&opts.name) {
        bail!(
            "{} already has a component named `{}`",
            opts.manifest.display(),
            opts.name
        );
    }
    let shapes = opts.shapes.join(";");
    check_model(&opts.file, &shapes)?;

    let dir = manifest.dir.join("models").join(&opts.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dest = dir.join("model.onnx");
    std::fs::copy(&opts.file, &dest)
        .with_context(|| format!("copying {} to {}", opts.file.display(), dest.display()))?;

    let original = std::fs::read_to_string(&opts.manifest)
        .with_context(|| format!("reading {}", opts.manifest.display()))?;
    let mut text = original.clone();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&snippet(&opts.name, &shapes));
    std::fs::write(&opts.manifest, &text)
        .with_context(|| format!("writing {}", opts.manifest.display()))?;
    // The result must still be a manifest we (and Spin) accept.
    if let Err(e) = Manifest::load(&opts.manifest) {
        std::fs::write(&opts.manifest, original)?;
        bail!("adding `{}` would break the manifest: {e}", opts.name);
    }
    eprintln!(
        "Added model `{}`: {} and component `{}` in {}. Run `edgeinfer up --build` to serve it at /v2/models/{}.",
        opts.name,
        dest.display(),
        opts.name,
        opts.manifest.display(),
        opts.name
    );
    Ok(())
}

/// Spin component ids: lower-case letters, digits and single hyphens.
fn check_name(name: &str) -> Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !ok {
        bail!("`{name}` is not a valid model name: use lower-case letters, digits and `-`");
    }
    Ok(())
}

/// Loads, optimises and plans the model with the engine the function runs
/// (the kit's tract engine, built natively), so that an operator tract lacks
/// is reported now, by name.
pub fn check_model(file: &Path, shapes: &str) -> Result<()> {
    use kit::engine::Engine as _;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let checked = kit::engine::TractEngine::from_onnx(&bytes).and_then(|engine| {
        if shapes.is_empty() {
            return Ok(());
        }
        engine.prepare(kit::engine::parse_input_shapes(engine.inputs(), shapes)?)
    });
    if let Err(e) = checked {
        bail!("{} cannot be served: {}", file.display(), e.message());
    }
    Ok(())
}

fn snippet(name: &str, shapes: &str) -> String {
    let shapes = if shapes.is_empty() {
        String::new()
    } else {
        format!(", EDGEINFER_INPUT_SHAPES = \"{shapes}\"")
    };
    format!(
        r#"
[[trigger.http]]
route = "/v2/models/{name}/..."
component = "{name}"

[component.{name}]
description = "{name} (ONNX), served over the Open Inference Protocol by the generic `{GENERIC_CRATE}` function."
source = "target/baked/{name}.wasm"
files = [{{ source = "models/{name}", destination = "/model" }}]
environment = {{ EDGEINFER_MODEL_NAME = "{name}"{shapes} }}
[component.{name}.build]
command = "cargo build --release -p {GENERIC_CRATE}"
workdir = "functions"
[component.{name}.tool.edgeinfer]
bake = "target/wasm/wasm32-wasip2/release/{GENERIC_CRATE}.wasm"
"#
    )
}
