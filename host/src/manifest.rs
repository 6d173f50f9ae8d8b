//! Spin application manifest, version 2, read unchanged.
//!
//! Parsing is strict: a key Spin would not accept is an error naming the file,
//! line and key. Capabilities edgeinfer does not provide (key-value stores,
//! SQLite, AI models, component dependencies) are rejected at load time rather
//! than silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::toml_file::{ConfigError, Source};
use crate::variables::{Template, VariableDecl};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub spin_manifest_version: Spanned<u32>,
    pub application: Application,
    #[serde(default)]
    pub variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    pub trigger: Triggers,
    #[serde(default)]
    pub component: BTreeMap<String, ComponentSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub authors: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub trigger: ApplicationTriggers,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationTriggers {
    #[serde(default)]
    pub http: Option<HttpAppSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAppSettings {
    #[serde(default)]
    pub base: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    #[serde(default)]
    pub id: Option<String>,
    pub route: Spanned<RouteSpec>,
    #[serde(default)]
    pub component: Option<Spanned<ComponentRef>>,
    #[serde(default)]
    pub executor: Option<Spanned<toml::Table>>,
    #[serde(default)]
    pub static_response: Option<StaticResponse>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RouteSpec {
    Path(String),
    Private(PrivateRoute),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateRoute {
    pub private: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ComponentRef {
    Named(String),
    Inline(Box<ComponentSpec>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticResponse {
    #[serde(default)]
    pub status_code: Option<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    #[serde(default)]
    pub description: Option<String>,
    pub source: Spanned<SourceSpec>,
    #[serde(default)]
    pub files: Vec<Spanned<FileMount>>,
    #[serde(default)]
    pub exclude_files: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub variables: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    #[serde(default)]
    pub sqlite_databases: Vec<String>,
    #[serde(default)]
    pub ai_models: Vec<String>,
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    #[serde(default)]
    pub build: Option<BuildSpec>,
    /// Per-tool settings; Spin ignores tools it does not know.
    #[serde(default)]
    pub tool: Tools,
    #[serde(default)]
    pub dependencies_inherit_configuration: bool,
    #[serde(default)]
    pub dependencies: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Tools {
    #[serde(default)]
    pub edgeinfer: Option<EdgeinferTool>,
    /// Other tools' tables are theirs to check.
    #[serde(flatten)]
    pub others: BTreeMap<String, toml::Value>,
}

/// `[component.X.tool.edgeinfer]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeinferTool {
    /// The component as built; `edgeinfer build` pre-initializes it into `source`.
    pub bake: Option<String>,
    /// The same function built for `wasi:nn`: served instead of `source` when
    /// edgeinfer.toml sets `engine = "wasi-nn"` (Spin, without wasi:nn, keeps
    /// running `source`).
    pub wasi_nn: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SourceSpec {
    Path(String),
    Remote(toml::Table),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileMount {
    Glob(String),
    Dir(DirMount),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirMount {
    pub source: String,
    pub destination: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    pub command: Commands,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub watch: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Commands {
    One(String),
    Many(Vec<String>),
}

impl Commands {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Commands::One(c) => std::slice::from_ref(c),
            Commands::Many(cs) => cs,
        }
    }
}

/// A validated application: every reference resolves and every value is in range.
#[derive(Debug)]
pub struct Manifest {
    pub path: PathBuf,
    /// Directory the manifest's relative paths are resolved against.
    pub dir: PathBuf,
    pub name: String,
    pub base: String,
    pub variables: BTreeMap<String, VariableDecl>,
    pub components: BTreeMap<String, Component>,
    pub routes: Vec<RouteEntry>,
}

#[derive(Debug)]
pub struct Component {
    pub id: String,
    pub source: PathBuf,
    pub files: Vec<FileMount>,
    pub exclude_files: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub variables: BTreeMap<String, Template>,
    pub allowed_outbound_hosts: Vec<Template>,
    pub build: Option<BuildSpec>,
    /// Built, not yet pre-initialized component; `source` is the baked result.
    pub bake_from: Option<PathBuf>,
    /// Its `wasi:nn` build (`tool.edgeinfer.wasi_nn`).
    pub wasi_nn: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// The route as written in the manifest (before applying the base).
    pub raw: String,
    pub target: RouteTarget,
}

#[derive(Debug, Clone)]
pub enum RouteTarget {
    Component(String),
    Static(StaticResponse),
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let src = Source::read(path)?;
        let raw: RawManifest = src.parse()?;
        Self::validate(&src, raw)
    }

    fn validate(src: &Source, raw: RawManifest) -> Result<Self, ConfigError> {
        if *raw.spin_manifest_version.get_ref() != 2 {
            return Err(src.error_at(
                raw.spin_manifest_version.span(),
                "spin_manifest_version",
                "only Spin manifest version 2 is supported",
            ));
        }
        let dir = src
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };

        for name in raw.variables.keys() {
            crate::variables::check_name(name)
                .map_err(|m| src.error_for_key(format!("variables.{name}"), m))?;
        }

        let mut specs: Vec<(String, ComponentSpec)> = raw.component.into_iter().collect();
        let mut routes = Vec::new();
        for (i, trigger) in raw.trigger.http.into_iter().enumerate() {
            let key = format!("trigger.http[{i}]");
            if let Some(exec) = &trigger.executor {
                let kind = exec.get_ref().get("type").and_then(|v| v.as_str());
                if kind != Some("spin") {
                    return Err(src.error_at(
                        exec.span(),
                        format!("{key}.executor"),
                        "only the `spin` executor is supported (WAGI is not)",
                    ));
                }
            }
            let route_span = trigger.route.span();
            let raw_route = match trigger.route.into_inner() {
                RouteSpec::Path(p) => p,
                // Private routes are reachable only by service chaining, which
                // edgeinfer does not offer; keep the component, skip the route.
                RouteSpec::Private(PrivateRoute { private: true }) => {
                    if let Some(c) = trigger.component
                        && let ComponentRef::Inline(spec) = c.into_inner()
                    {
                        specs.push((inline_name(&trigger.id, i), *spec));
                    }
                    continue;
                }
                RouteSpec::Private(PrivateRoute { private: false }) => {
                    return Err(src.error_at(
                        route_span,
                        format!("{key}.route"),
                        "`private = false` is not a route; give a path",
                    ));
                }
            };
            crate::routes::RoutePattern::parse(&raw_route)
                .map_err(|m| src.error_at(route_span.clone(), format!("{key}.route"), m))?;
            let target = match (trigger.component, trigger.static_response) {
                (Some(_), Some(_)) => {
                    return Err(src.error_at(
                        route_span,
                        key,
                        "a trigger has either `component` or `static_response`, not both",
                    ));
                }
                (None, None) => {
                    return Err(src.error_at(
                        route_span,
                        key,
                        "a trigger needs `component` or `static_response`",
                    ));
                }
                (None, Some(resp)) => {
                    let status = resp.status_code.unwrap_or(200);
                    if !(100..=599).contains(&status) {
                        return Err(src.error_at(
                            route_span,
                            format!("{key}.static_response.status_code"),
                            format!("{status} is not an HTTP status"),
                        ));
                    }
                    for (name, value) in &resp.headers {
                        let valid = http::HeaderName::try_from(name.as_str()).is_ok()
                            && http::HeaderValue::from_str(value).is_ok();
                        if !valid {
                            return Err(src.error_at(
                                route_span,
                                format!("{key}.static_response.headers.{name}"),
                                "not a valid HTTP header",
                            ));
                        }
                    }
                    RouteTarget::Static(resp)
                }
                (Some(c), None) => {
                    let span = c.span();
                    match c.into_inner() {
                        ComponentRef::Named(name) => {
                            if !specs.iter().any(|(n, _)| *n == name) {
                                return Err(src.error_at(
                                    span,
                                    format!("{key}.component"),
                                    format!("no component named `{name}` in this manifest"),
                                ));
                            }
                            RouteTarget::Component(name)
                        }
                        ComponentRef::Inline(spec) => {
                            let name = inline_name(&trigger.id, i);
                            specs.push((name.clone(), *spec));
                            RouteTarget::Component(name)
                        }
                    }
                }
            };
            if routes.iter().any(|r: &RouteEntry| r.raw == raw_route) {
                return Err(src.error_at(
                    route_span,
                    format!("{key}.route"),
                    format!("route `{raw_route}` is already used by another trigger"),
                ));
            }
            routes.push(RouteEntry {
                raw: raw_route,
                target,
            });
        }

        let mut components = BTreeMap::new();
        for (id, spec) in specs {
            let c = Self::component(src, &dir, &raw.variables, id.clone(), spec)?;
            components.insert(id, c);
        }

        let base = raw
            .application
            .trigger
            .http
            .and_then(|h| h.base)
            .unwrap_or_else(|| "/".to_string());

        Ok(Manifest {
            path: src.path.clone(),
            dir,
            name: raw.application.name,
            base,
            variables: raw.variables,
            components,
            routes,
        })
    }

    fn component(
        src: &Source,
        dir: &Path,
        app_vars: &BTreeMap<String, VariableDecl>,
        id: String,
        spec: ComponentSpec,
    ) -> Result<Component, ConfigError> {
        let key = format!("component.{id}");
        let unsupported = [
            ("key_value_stores", !spec.key_value_stores.is_empty()),
            ("sqlite_databases", !spec.sqlite_databases.is_empty()),
            ("ai_models", !spec.ai_models.is_empty()),
            ("dependencies", spec.dependencies.is_some()),
        ];
        if let Some((what, _)) = unsupported.iter().find(|(_, used)| *used) {
            return Err(src.error_for_key(
                format!("{key}.{what}"),
                "this Spin capability is not provided by edgeinfer",
            ));
        }
        let source_span = spec.source.span();
        let source = match spec.source.into_inner() {
            SourceSpec::Path(p) => dir.join(p),
            SourceSpec::Remote(_) => {
                return Err(src.error_at(
                    source_span,
                    format!("{key}.source"),
                    "only local file sources are supported; download the component first",
                ));
            }
        };
        let mut variables = BTreeMap::new();
        for (name, value) in spec.variables {
            crate::variables::check_name(&name)
                .map_err(|m| src.error_at(value.span(), format!("{key}.variables.{name}"), m))?;
            let tpl = Template::parse(value.get_ref(), app_vars)
                .map_err(|m| src.error_at(value.span(), format!("{key}.variables.{name}"), m))?;
            variables.insert(name, tpl);
        }
        let mut allowed_outbound_hosts = Vec::new();
        for (i, host) in spec.allowed_outbound_hosts.into_iter().enumerate() {
            let at = format!("{key}.allowed_outbound_hosts[{i}]");
            let tpl = Template::parse(host.get_ref(), app_vars)
                .map_err(|m| src.error_at(host.span(), &at, m))?;
            // Literal patterns are checked now; templated ones once resolved.
            if let Some(lit) = tpl.as_literal() {
                crate::outbound::HostPattern::parse(lit)
                    .map_err(|m| src.error_at(host.span(), &at, m))?;
            }
            allowed_outbound_hosts.push(tpl);
        }
        let mut files = Vec::new();
        for (i, f) in spec.files.into_iter().enumerate() {
            let span = f.span();
            let f = f.into_inner();
            if let FileMount::Dir(d) = &f
                && !d.destination.starts_with('/')
            {
                return Err(src.error_at(
                    span,
                    format!("{key}.files[{i}].destination"),
                    "destination must be an absolute path",
                ));
            }
            files.push(f);
        }
        Ok(Component {
            id,
            source,
            files,
            exclude_files: spec.exclude_files,
            environment: spec.environment,
            variables,
            allowed_outbound_hosts,
            build: spec.build,
            bake_from: spec
                .tool
                .edgeinfer
                .as_ref()
                .and_then(|t| t.bake.as_ref())
                .map(|p| dir.join(p)),
            wasi_nn: spec
                .tool
                .edgeinfer
                .and_then(|t| t.wasi_nn)
                .map(|p| dir.join(p)),
        })
    }
}

fn inline_name(id: &Option<String>, index: usize) -> String {
    id.clone()
        .unwrap_or_else(|| format!("inline-component-{index}"))
}
