//! Spin's HTTP route matching: exact paths, trailing `/...` wildcards and
//! `:name` segments; the most specific (longest) match wins.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone)]
pub struct RoutePattern {
    segments: Vec<Segment>,
    wildcard: bool,
}

impl RoutePattern {
    pub fn parse(route: &str) -> Result<Self, String> {
        if !route.starts_with('/') {
            return Err(format!("route `{route}` must start with `/`"));
        }
        let mut segments = Vec::new();
        let mut wildcard = false;
        let parts: Vec<&str> = split_path(route).collect();
        for (i, part) in parts.iter().enumerate() {
            if *part == "..." {
                if i + 1 != parts.len() {
                    return Err(format!("`...` may only end a route, in `{route}`"));
                }
                wildcard = true;
            } else if let Some(name) = part.strip_prefix(':') {
                if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    return Err(format!("bad parameter `{part}` in route `{route}`"));
                }
                segments.push(Segment::Param(name.to_string()));
            } else if part.contains("...") {
                return Err(format!("`...` must be a whole segment, in `{route}`"));
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(Self { segments, wildcard })
    }

    /// The pattern without its trailing `/...`, as Spin's `spin-component-route`.
    fn prefix(&self) -> String {
        let mut s = String::new();
        for seg in &self.segments {
            s.push('/');
            match seg {
                Segment::Literal(l) => s.push_str(l),
                Segment::Param(p) => {
                    s.push(':');
                    s.push_str(p)
                }
            }
        }
        s
    }

    /// More specific patterns rank higher: exact before wildcard, then longer.
    fn rank(&self) -> (bool, usize, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (!self.wildcard, self.segments.len(), literals)
    }

    fn matches(&self, path: &[&str]) -> Option<(BTreeMap<String, String>, usize)> {
        if path.len() < self.segments.len() || (!self.wildcard && path.len() != self.segments.len())
        {
            return None;
        }
        let mut params = BTreeMap::new();
        for (seg, part) in self.segments.iter().zip(path) {
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => {
                    params.insert(name.clone(), (*part).to_string());
                }
            }
        }
        Some((params, self.segments.len()))
    }
}

fn split_path(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// Joins the application base and a component route as Spin does.
fn with_base(base: &str, route: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.is_empty() {
        route.to_string()
    } else {
        format!("{base}{route}")
    }
}

#[derive(Debug, Clone)]
struct Entry<T> {
    pattern: RoutePattern,
    /// As written in the manifest, e.g. `/models/...`.
    raw: String,
    /// Base applied, e.g. `/api/models/...`.
    full: String,
    /// Without the wildcard, e.g. `/models`.
    component_route: String,
    target: T,
}

/// The result of routing one request path.
#[derive(Debug, Clone)]
pub struct RouteMatch<'a, T> {
    pub target: &'a T,
    pub params: BTreeMap<String, String>,
    /// `spin-matched-route`: the route with the base applied.
    pub matched_route: &'a str,
    /// `spin-raw-component-route`: the route as written.
    pub raw_component_route: &'a str,
    /// `spin-component-route`: the route without its wildcard.
    pub component_route: &'a str,
    /// `spin-path-info`: the part of the path the wildcard matched.
    pub path_info: String,
}

#[derive(Debug, Clone)]
pub struct Router<T> {
    base: String,
    entries: Vec<Entry<T>>,
}

impl<T> Router<T> {
    /// Builds a router; routes must already be valid (the manifest checks them).
    pub fn new(base: &str, routes: impl IntoIterator<Item = (String, T)>) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (raw, target) in routes {
            let full = with_base(base, &raw);
            let pattern = RoutePattern::parse(&full)?;
            let component_route = RoutePattern::parse(&raw)?.prefix();
            entries.push(Entry {
                pattern,
                component_route,
                raw,
                full,
                target,
            });
        }
        // Most specific first, so the first match is the best one.
        entries.sort_by_key(|e| std::cmp::Reverse(e.pattern.rank()));
        Ok(Self {
            base: base.to_string(),
            entries,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn route(&self, path: &str) -> Option<RouteMatch<'_, T>> {
        let parts: Vec<&str> = split_path(path).collect();
        self.entries.iter().find_map(|e| {
            let (params, consumed) = e.pattern.matches(&parts)?;
            let path_info = if e.pattern.wildcard {
                let rest = &parts[consumed..];
                let mut info: String = rest.iter().flat_map(|p| ["/", p]).collect();
                if path.ends_with('/') && !rest.is_empty() {
                    info.push('/');
                }
                info
            } else {
                String::new()
            };
            Some(RouteMatch {
                target: &e.target,
                params,
                matched_route: &e.full,
                raw_component_route: &e.raw,
                component_route: &e.component_route,
                path_info,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<&'static str> {
        Router::new(
            "/",
            [
                ("/...".to_string(), "fallback"),
                ("/models/...".to_string(), "models"),
                ("/models/digits".to_string(), "digits"),
                ("/users/:id".to_string(), "user"),
                ("/users/:id/...".to_string(), "user-any"),
            ],
        )
        .unwrap()
    }

    #[test]
    fn most_specific_wins() {
        let r = router();
        assert_eq!(*r.route("/models/digits").unwrap().target, "digits");
        assert_eq!(*r.route("/models/other").unwrap().target, "models");
        assert_eq!(*r.route("/models").unwrap().target, "models");
        assert_eq!(*r.route("/elsewhere").unwrap().target, "fallback");
        assert_eq!(*r.route("/").unwrap().target, "fallback");
        let m = r.route("/users/42").unwrap();
        assert_eq!(*m.target, "user");
        assert_eq!(m.params["id"], "42");
        let m = r.route("/users/42/posts/1").unwrap();
        assert_eq!(*m.target, "user-any");
        assert_eq!(m.path_info, "/posts/1");
    }

    #[test]
    fn spin_headers_parts() {
        let r = Router::new("/api", [("/models/...".to_string(), ())]).unwrap();
        assert!(r.route("/models/x").is_none());
        let m = r.route("/api/models/a/b").unwrap();
        assert_eq!(m.matched_route, "/api/models/...");
        assert_eq!(m.raw_component_route, "/models/...");
        assert_eq!(m.component_route, "/models");
        assert_eq!(m.path_info, "/a/b");
    }

    #[test]
    fn rejects_bad_routes() {
        assert!(RoutePattern::parse("models").is_err());
        assert!(RoutePattern::parse("/a/.../b").is_err());
        assert!(RoutePattern::parse("/a/:").is_err());
        assert!(RoutePattern::parse("/a/b...").is_err());
    }
}
