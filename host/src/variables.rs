//! Spin application variables: declarations, `{{ name }}` templates, and their
//! resolution from defaults and `SPIN_VARIABLE_*` environment variables.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub description: Option<String>,
}

/// Spin's rule: lower-case ASCII letters, digits and underscores, starting with a letter.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid variable name `{name}`: use lower-case letters, digits and `_`, starting with a letter"
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(String),
}

/// A string with `{{ variable }}` references to application variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    /// Parses `text`, checking every reference names a declared variable.
    pub fn parse(text: &str, declared: &BTreeMap<String, VariableDecl>) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed `{{{{` in `{text}`"))?;
            let name = after[..end].trim();
            check_name(name)?;
            if !declared.contains_key(name) {
                return Err(format!(
                    "`{{{{ {name} }}}}` refers to an undeclared variable; add it to [variables]"
                ));
            }
            parts.push(Part::Var(name.to_string()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template(parts))
    }

    pub fn as_literal(&self) -> Option<&str> {
        match self.0.as_slice() {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    pub fn render(&self, values: &BTreeMap<String, String>) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Part::Lit(s) => s.as_str(),
                // Resolution guarantees every declared variable has a value.
                Part::Var(v) => values.get(v).map(String::as_str).unwrap_or_default(),
            })
            .collect()
    }
}

/// Gives every application variable a value: the environment's
/// `SPIN_VARIABLE_<NAME>` first, then the default. A required variable with
/// neither is an error, reported before serving starts.
pub fn resolve(
    declared: &BTreeMap<String, VariableDecl>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    for (name, decl) in declared {
        let from_env = env(&format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase()));
        match from_env.or_else(|| decl.default.clone()) {
            Some(v) => {
                values.insert(name.clone(), v);
            }
            None if decl.required => anyhow::bail!(
                "variable `{name}` is required: set SPIN_VARIABLE_{} or give it a default",
                name.to_ascii_uppercase()
            ),
            None => {}
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decls(names: &[&str]) -> BTreeMap<String, VariableDecl> {
        names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    VariableDecl {
                        default: Some(format!("<{n}>")),
                        required: false,
                        secret: false,
                        description: None,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn renders_templates() {
        let d = decls(&["region", "zone"]);
        let t = Template::parse("https://{{ region }}.{{zone}}.example", &d).unwrap();
        let v = resolve(&d, |k| (k == "SPIN_VARIABLE_REGION").then(|| "eu".into())).unwrap();
        assert_eq!(t.render(&v), "https://eu.<zone>.example");
    }

    #[test]
    fn rejects_undeclared_and_bad_names() {
        let d = decls(&["a"]);
        assert!(
            Template::parse("{{ b }}", &d)
                .unwrap_err()
                .contains("undeclared")
        );
        assert!(Template::parse("{{ A }}", &d).is_err());
        assert!(
            Template::parse("{{ a", &d)
                .unwrap_err()
                .contains("unclosed")
        );
    }

    #[test]
    fn required_without_value_fails() {
        let mut d = decls(&[]);
        d.insert(
            "token".into(),
            VariableDecl {
                default: None,
                required: true,
                secret: true,
                description: None,
            },
        );
        assert!(resolve(&d, |_| None).is_err());
        assert_eq!(
            resolve(&d, |_| Some("x".into())).unwrap()["token"],
            "x".to_string()
        );
    }
}
