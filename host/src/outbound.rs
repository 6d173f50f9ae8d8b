//! Outbound HTTP: Spin's `allowed_outbound_hosts`, denied unless listed.

use std::sync::Arc;

use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Port {
    Any,
    Range(u16, u16),
}

/// One `allowed_outbound_hosts` entry, e.g. `https://*.example.com:8000..8080`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// `None` matches any scheme (`*://`).
    scheme: Option<String>,
    /// `None` matches any host; a leading `.` matches a suffix (`*.example.com`).
    host: Option<String>,
    port: Port,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            format!("`{text}` needs a scheme, e.g. `https://{text}` or `*://{text}`")
        })?;
        let scheme = match scheme {
            "*" => None,
            "http" | "https" => Some(scheme.to_string()),
            other => return Err(format!("unsupported scheme `{other}` in `{text}`")),
        };
        if rest.contains('/') {
            return Err(format!("`{text}` must not contain a path"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
            _ => (rest, None),
        };
        let host = match host {
            "" => return Err(format!("`{text}` has no host")),
            "*" => None,
            h => Some(h.strip_prefix('*').unwrap_or(h).to_ascii_lowercase()),
        };
        let port = match port {
            Some("*") => Port::Any,
            Some(p) => match p.split_once("..") {
                Some((a, b)) => Port::Range(parse_port(a, text)?, parse_port(b, text)?),
                None => {
                    let p = parse_port(p, text)?;
                    Port::Range(p, p)
                }
            },
            None => match scheme.as_deref() {
                Some("http") => Port::Range(80, 80),
                Some("https") => Port::Range(443, 443),
                _ => return Err(format!("`{text}` needs a port when the scheme is `*`")),
            },
        };
        Ok(Self { scheme, host, port })
    }

    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let host_ok = match &self.host {
            None => true,
            Some(suffix) if suffix.starts_with('.') => host.ends_with(suffix.as_str()),
            Some(h) => h == host,
        };
        let port_ok = match self.port {
            Port::Any => true,
            Port::Range(a, b) => (a..=b).contains(&port),
        };
        scheme_ok && host_ok && port_ok
    }
}

fn parse_port(p: &str, text: &str) -> Result<u16, String> {
    p.parse().map_err(|_| format!("bad port `{p}` in `{text}`"))
}

/// The resolved allow-list of one component; cheap to clone into each store.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allowed: Arc<[HostPattern]>,
}

impl OutboundPolicy {
    pub fn new(allowed: Vec<HostPattern>) -> Self {
        Self {
            allowed: allowed.into(),
        }
    }

    pub fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https");
        let Some(host) = uri.host() else { return false };
        let host = host.to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        self.allowed.iter().any(|p| p.allows(scheme, &host, port))
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: IoFuture,
    ) -> Box<
        dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), wasmtime_wasi_http::Error>>
            + Send,
    > {
        if !self.allows(request.uri()) {
            tracing::info!(uri = %request.uri(), "outbound request denied by allowed_outbound_hosts");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((res.map(BodyExt::boxed_unsync), Box::new(io) as IoFuture))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(p: &[&str]) -> OutboundPolicy {
        OutboundPolicy::new(p.iter().map(|s| HostPattern::parse(s).unwrap()).collect())
    }

    #[test]
    fn deny_by_default() {
        assert!(!policy(&[]).allows(&"https://example.com/".parse().unwrap()));
    }

    #[test]
    fn patterns() {
        let p = policy(&["https://*.example.com", "http://localhost:3000..3010"]);
        assert!(p.allows(&"https://api.example.com/x".parse().unwrap()));
        assert!(!p.allows(&"https://example.org/".parse().unwrap()));
        assert!(!p.allows(&"http://api.example.com/".parse().unwrap()));
        assert!(p.allows(&"http://localhost:3005/".parse().unwrap()));
        assert!(!p.allows(&"http://localhost:3011/".parse().unwrap()));
        let any = policy(&["*://*:*"]);
        assert!(any.allows(&"http://10.0.0.1:9/".parse().unwrap()));
    }

    #[test]
    fn bad_patterns() {
        assert!(HostPattern::parse("example.com").is_err());
        assert!(HostPattern::parse("ftp://example.com").is_err());
        assert!(HostPattern::parse("*://example.com").is_err());
        assert!(HostPattern::parse("https://example.com/path").is_err());
        assert!(HostPattern::parse("https://example.com:99999").is_err());
    }
}
