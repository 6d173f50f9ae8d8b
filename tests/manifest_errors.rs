//! A broken manifest or runtime config is a CLI error naming file, line and key.

mod common;

use common::{App, artifacts, component, manifest};

fn hello() -> String {
    component("hello", "/hello", artifacts::HELLO)
}

fn fails_with(app: App, expected: &[&str]) {
    let err = app.start_err();
    for e in expected {
        assert!(err.contains(e), "expected `{e}` in:\n{err}");
    }
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = format!("{}colour = \"blue\"\n", manifest(&hello()));
    let line = text.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
    fails_with(App::new(text), &[&format!("spin.toml:{line}"), "colour"]);
}

#[test]
fn wrong_type() {
    let text = manifest(&format!("{}environment = [\"A\"]\n", hello()));
    let line = text
        .lines()
        .position(|l| l.starts_with("environment"))
        .unwrap()
        + 1;
    fails_with(
        App::new(text),
        &[&format!("spin.toml:{line}"), "environment"],
    );
}

#[test]
fn unknown_component_reference() {
    let text = manifest("[[trigger.http]]\nroute = \"/x\"\ncomponent = \"ghost\"\n");
    fails_with(
        App::new(text),
        &["spin.toml:7", "trigger.http[0].component", "ghost"],
    );
}

#[test]
fn bad_and_duplicate_routes() {
    let text = manifest(&hello().replace("route = \"/hello\"", "route = \"hello\""));
    fails_with(
        App::new(text),
        &["spin.toml:", "route", "must start with `/`"],
    );
    let twice = manifest(&format!(
        "{}{}",
        hello(),
        component("again", "/hello", artifacts::HELLO)
    ));
    fails_with(App::new(twice), &["already used"]);
}

#[test]
fn undeclared_variable_in_template() {
    let text = manifest(&format!(
        "{}[component.hello.variables]\nx = \"{{{{ nope }}}}\"\n",
        hello()
    ));
    fails_with(
        App::new(text),
        &["spin.toml:", "component.hello.variables.x", "undeclared"],
    );
}

#[test]
fn bad_outbound_host() {
    let text = manifest(&format!(
        "{}allowed_outbound_hosts = [\"example.com\"]\n",
        hello()
    ));
    fails_with(
        App::new(text),
        &["allowed_outbound_hosts[0]", "needs a scheme"],
    );
}

#[test]
fn wrong_manifest_version() {
    let text = manifest(&hello()).replace("spin_manifest_version = 2", "spin_manifest_version = 1");
    fails_with(App::new(text), &["spin.toml:1", "spin_manifest_version"]);
}

#[test]
fn unsupported_capability_is_refused_not_ignored() {
    let text = manifest(&format!("{}key_value_stores = [\"default\"]\n", hello()));
    fails_with(App::new(text), &["key_value_stores", "not provided"]);
}

#[test]
fn missing_source_names_the_component() {
    let text = manifest(&component("ghost", "/g", "does-not-exist.wasm"));
    fails_with(App::new(text), &["ghost", "does-not-exist.wasm"]);
}

#[test]
fn not_a_component() {
    let app =
        App::new(manifest(&component("junk", "/j", "junk.wasm"))).file("junk.wasm", "not wasm");
    fails_with(app, &["junk"]);
}

#[test]
fn runtime_config_errors() {
    let unknown = App::new(manifest(&hello()))
        .runtime_config("[component.hello]\ntimeout_ms = 100\nspeed = 11\n");
    fails_with(unknown, &["edgeinfer.toml:3", "speed"]);
    let bad_value =
        App::new(manifest(&hello())).runtime_config("[component.hello]\ntimeout_ms = \"soon\"\n");
    fails_with(
        bad_value,
        &["edgeinfer.toml:2", "component.hello.timeout_ms"],
    );
    let out_of_range =
        App::new(manifest(&hello())).runtime_config("[component.hello]\n\nmax_memory_mb = 0\n");
    fails_with(
        out_of_range,
        &["edgeinfer.toml:3", "component.hello.max_memory_mb"],
    );
    let ghost = App::new(manifest(&hello())).runtime_config("[component.ghost]\ntimeout_ms = 1\n");
    fails_with(ghost, &["edgeinfer.toml:1", "ghost"]);
}

#[test]
fn malformed_toml() {
    fails_with(
        App::new("spin_manifest_version = 2\n[application\n"),
        &["spin.toml:2"],
    );
}

#[test]
fn bad_static_response_header() {
    let text = manifest(
        "[[trigger.http]]\nroute = \"/s\"\nstatic_response = { headers = { \"bad header\" = \"x\" } }\n",
    );
    fails_with(
        App::new(text),
        &[
            "spin.toml:6",
            "static_response.headers",
            "not a valid HTTP header",
        ],
    );
}

#[test]
fn edgeinfer_toml_is_read_from_the_working_directory() {
    // The manifest lives elsewhere; ./edgeinfer.toml still applies.
    let app = App::new(manifest(&hello()))
        .file("app/spin.toml", manifest(&hello()))
        .runtime_config("[component.hello]\nspeed = 11\n")
        .arg("--from")
        .arg("app/spin.toml");
    fails_with(app, &["edgeinfer.toml:2", "speed"]);
}
