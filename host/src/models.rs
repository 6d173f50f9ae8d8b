//! `edgeinfer models add`: serve an ONNX file over the Open Inference
//! Protocol with no code, by adding a component of the generic `oip` function
//! to spin.toml. A model tract cannot run is refused here, naming the
//! operator, instead of failing at its first request.
//!
//! spin.toml stays runnable on Spin: the component is the tract-in-Wasm
//! function, with its `wasi:nn` build named in `tool.edgeinfer.wasi_nn`.
//! `--engine wasi-nn` sets `engine = "wasi-nn"` for it in edgeinfer.toml, so
//! edgeinfer serves the wasi:nn build and runs the model itself.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::manifest::Manifest;
use crate::runtime_config::Engine;

/// `edgeinfer models add`'s arguments.
#[derive(clap::Args)]
pub struct AddOptions {
    /// Model name, used in /v2/models/NAME and as the component id.
    pub name: String,
    /// The .onnx file; it is copied to models/NAME/.
    pub file: PathBuf,
    /// Where inference runs.
    #[arg(long, value_enum, default_value = "tract")]
    pub engine: Engine,
    /// An input shape to plan at build time, e.g. `x=1,3,48,192` (one per
    /// input), so models tract plans per concrete shape serve it cold.
    #[arg(long = "shape")]
    pub shapes: Vec<String>,
    #[arg(long = "from", short = 'f', default_value = "spin.toml")]
    pub manifest: PathBuf,
}

/// The generic function every added model runs in, and its wasi:nn build.
/// They are built by two commands: one `cargo build` of both would unify the
/// kit's features and link tract into the wasi:nn build too.
const GENERIC_CRATE: &str = "oip";
const GENERIC_NN_CRATE: &str = "oip-nn";

pub fn add(opts: &AddOptions) -> Result<()> {
    check_name(&opts.name)?;
    let manifest = Manifest::load(&opts.manifest)?;
    let runtime_config = manifest.dir.join("edgeinfer.toml");
    let original_config = std::fs::read_to_string(&runtime_config).ok();
    if opts.engine == Engine::WasiNn
        && let Some(text) = &original_config
    {
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("reading {}", runtime_config.display()))?;
        if table
            .get("component")
            .and_then(|c| c.get(&opts.name))
            .is_some()
        {
            bail!(
                "{} already has [component.{}]; set engine = \"wasi-nn\" there",
                runtime_config.display(),
                opts.name
            );
        }
    }
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
    if opts.engine == Engine::WasiNn {
        let mut config = original_config.clone().unwrap_or_default();
        if !config.is_empty() && !config.ends_with('\n') {
            config.push('\n');
        }
        config.push_str(&format!(
            "\n[component.{}]\nengine = \"wasi-nn\"   # the host runs the model (wasi:nn)\n",
            opts.name
        ));
        std::fs::write(&runtime_config, config)
            .with_context(|| format!("writing {}", runtime_config.display()))?;
    }
    // The result must still be a manifest we (and Spin) accept, and a
    // runtime config that goes with it.
    let checked = Manifest::load(&opts.manifest)
        .map_err(anyhow::Error::from)
        .and_then(|m| {
            crate::runtime_config::RuntimeConfig::load(&runtime_config, &m, false)
                .map(|_| ())
                .map_err(anyhow::Error::from)
        });
    if let Err(e) = checked {
        std::fs::write(&opts.manifest, original)?;
        match &original_config {
            Some(text) => std::fs::write(&runtime_config, text)?,
            None if opts.engine == Engine::WasiNn => std::fs::remove_file(&runtime_config)?,
            None => {}
        }
        bail!("adding `{}` would break the app: {e:#}", opts.name);
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
command = ["cargo build --release -p {GENERIC_CRATE}", "cargo build --release -p {GENERIC_NN_CRATE}"]
workdir = "functions"
[component.{name}.tool.edgeinfer]
bake = "target/wasm/wasm32-wasip2/release/{GENERIC_CRATE}.wasm"
wasi_nn = "target/wasm/wasm32-wasip2/release/oip_nn.wasm"
"#
    )
}
