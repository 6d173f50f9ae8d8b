//! Builds every guest in `functions/` for wasm32-wasip2, once per test build,
//! and exports their paths as constants (the pattern of wasmtime's
//! test-programs artifacts).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../..")
        .canonicalize()
        .unwrap();
    let functions = root.join("functions");
    println!("cargo:rerun-if-changed={}", functions.display());
    // Model functions embed their model files.
    println!("cargo:rerun-if-changed={}", root.join("models").display());
    // The wasi:nn WIT the kit's guest bindings are generated from.
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    // `oip-nn` and `probe` are built apart: built with the others, cargo
    // would unify the kit's features and link tract into them (12 MB instead
    // of 0.5 MB).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for args in [
        &["--workspace", "--exclude", "oip-nn", "--exclude", "probe"][..],
        &["--package", "oip-nn", "--package", "probe"][..],
    ] {
        let mut cmd = Command::new(&cargo);
        // functions/.cargo/config.toml sets the target, target dir and SIMD
        // flags, and cargo reads it from the working directory.
        cmd.current_dir(&functions)
            .args(["build", "--release"])
            .args(args);
        // Flags meant for the native build must not leak into the guest build.
        for var in [
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_BUILD_RUSTFLAGS",
            "RUSTC_WORKSPACE_WRAPPER",
        ] {
            cmd.env_remove(var);
        }
        let status = cmd.status().expect("running cargo for the guests");
        assert!(status.success(), "building the guests in functions/ failed");
    }

    let out_dir = root.join("target/wasm/wasm32-wasip2/release");
    let mut consts = String::new();
    for (name, file) in [
        ("HELLO", "hello.wasm"),
        ("HELLO_P2", "hello_p2.wasm"),
        ("PROBE", "probe.wasm"),
        ("DIGITS", "digits.wasm"),
        ("FILETYPE", "filetype.wasm"),
        ("EMBED", "embed.wasm"),
        ("OIP", "oip.wasm"),
        ("OIP_NN", "oip_nn.wasm"),
    ] {
        let path = out_dir.join(file);
        assert!(path.exists(), "missing guest artifact {}", path.display());
        consts.push_str(&format!(
            "pub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("artifacts.rs");
    std::fs::write(dest, consts).unwrap();
}
