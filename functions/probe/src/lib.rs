//! TEST-ONLY component driven by the host's integration tests. Each endpoint
//! pokes one host behaviour: request mapping, variables, env, files, outbound
//! HTTP, bodies, timers, and the failure modes (CPU, memory, stack, panic).
//! Never deploy it: it lets the caller read files and burn resources.
//!
//! It has the model functions' allocator and a pre-initializer, so a test can
//! bake it and see what a baked function sees at request time.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use spin_sdk::http::body::IncomingBodyExt as _;
use spin_sdk::http::{FullBody, Method, Request, Response, StatusCode};
use spin_sdk::http_service;

type Reply = Response<FullBody<Bytes>>;

static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// Touches what a model function's initializer may touch (its files, its
// environment, stdout and stderr), so that a test can check a baked instance
// gets its own.
kit::export_wizer_init!(|| {
    let _ = std::fs::metadata("/");
    let _ = std::env::var_os("MODE");
    println!("probe: initialized");
    eprintln!("probe: initialized");
    // What baking must refuse: a file still open when the snapshot is taken.
    if let Some(path) = std::env::var_os("PROBE_INIT_KEEP_OPEN") {
        std::mem::forget(std::fs::File::open(path));
    }
});

#[http_service]
async fn probe(req: Request) -> Reply {
    // Dispatch on what follows the last `/probe/`, so any route prefix works.
    let path = req.uri().path().to_owned();
    let Some((_, endpoint)) = path.rsplit_once("/probe/") else {
        return no_such_probe();
    };
    let query = req.uri().query().unwrap_or("").to_owned();

    match endpoint {
        "request" => describe_request(&req),
        "log" => {
            let line = query_param(&query, "line").unwrap_or_default();
            println!("{line}");
            eprintln!("{line}");
            text(StatusCode::OK, "logged")
        }
        "file" => file(req, &query).await,
        "outbound" => outbound(&query).await,
        "echo" => echo(req).await,
        "sleep" => sleep(&query).await,
        "loop" => spin_forever(),
        "alloc" => alloc_forever(),
        "stack" => {
            let depth = recurse(0);
            text(StatusCode::OK, format!("returned from depth {depth}?!"))
        }
        "deep" => {
            // Small frames kept in wasm locals: exhausts wasmtime's own stack
            // limit rather than the shadow stack in linear memory.
            let depth = deep(0);
            text(StatusCode::OK, format!("returned from depth {depth}?!"))
        }
        "panic" => panic!("probe panic"),
        "exit" => {
            // Exits before answering, as a CLI-minded guest would on an error.
            // wasi:cli/exit@0.2 carries only success or failure: 3 arrives as 1.
            eprintln!("probe: giving up on purpose");
            std::process::exit(3)
        }
        "empty" => reply(
            StatusCode::NO_CONTENT,
            "text/plain; charset=utf-8",
            Bytes::new(),
        ),
        "big" => big(),
        "counter" => {
            // A fresh instance per request always starts from zero.
            let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            text(StatusCode::OK, n.to_string())
        }
        _ => {
            if let Some(name) = endpoint.strip_prefix("var/") {
                variable(name).await
            } else if let Some(name) = endpoint.strip_prefix("env/") {
                match std::env::var(name) {
                    Ok(value) => text(StatusCode::OK, value),
                    Err(e) => text(StatusCode::NOT_FOUND, format!("{name}: {e}")),
                }
            } else {
                no_such_probe()
            }
        }
    }
}

fn describe_request(req: &Request) -> Reply {
    // `HeaderName`s are already lower-case; a repeated header keeps its last value.
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value.into())
        })
        .collect();
    let body = serde_json::json!({
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "headers": headers,
    });
    reply(StatusCode::OK, "application/json", body.to_string())
}

async fn variable(name: &str) -> Reply {
    use spin_sdk::variables::Error;
    match spin_sdk::variables::get(name).await {
        Ok(value) => text(StatusCode::OK, value),
        Err(e @ (Error::Undefined(_) | Error::InvalidName(_))) => {
            text(StatusCode::NOT_FOUND, format!("{e:?}"))
        }
        // A provider failure is a host bug, not a missing variable: keep them apart.
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:?}")),
    }
}

async fn file(req: Request, query: &str) -> Reply {
    let Some(path) = query_param(query, "path") else {
        return text(StatusCode::BAD_REQUEST, "missing ?path=");
    };
    match *req.method() {
        Method::GET => match std::fs::read(&path) {
            Ok(contents) => reply(StatusCode::OK, "application/octet-stream", contents),
            Err(e) => text(StatusCode::NOT_FOUND, format!("{path}: {e}")),
        },
        Method::PUT => {
            let contents = match req.into_body().bytes().await {
                Ok(b) => b,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("reading body: {e:?}")),
            };
            match std::fs::write(&path, &contents) {
                Ok(()) => text(StatusCode::OK, "written"),
                Err(e) => text(StatusCode::FORBIDDEN, format!("{path}: {e}")),
            }
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT"),
    }
}

async fn outbound(query: &str) -> Reply {
    let Some(url) = query_param(query, "url") else {
        return text(StatusCode::BAD_REQUEST, "missing ?url=");
    };
    match spin_sdk::http::get(&url).await {
        Ok(resp) => text(StatusCode::OK, resp.status().as_u16().to_string()),
        Err(e) => text(StatusCode::BAD_GATEWAY, format!("{url}: {e:?}")),
    }
}

async fn echo(req: Request) -> Reply {
    match req.into_body().bytes().await {
        Ok(body) => {
            let mut resp = reply(StatusCode::OK, "application/octet-stream", body.clone());
            resp.headers_mut().insert("x-body-len", body.len().into());
            resp
        }
        Err(e) => text(StatusCode::BAD_REQUEST, format!("reading body: {e:?}")),
    }
}

async fn sleep(query: &str) -> Reply {
    let Some(ms) = query_param(query, "ms").and_then(|v| v.parse::<u64>().ok()) else {
        return text(StatusCode::BAD_REQUEST, "need ?ms=<integer>");
    };
    // wasi:clocks/monotonic-clock.wait-for: the task is parked, no CPU is burnt.
    spin_sdk::time::sleep(Duration::from_millis(ms)).await;
    text(StatusCode::OK, "slept")
}

/// Burns CPU forever; black_box keeps the optimiser from proving it side-effect free.
fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        counter = counter.wrapping_add(1);
        black_box(&mut counter);
    }
}

/// Allocates and dirties 1 MiB chunks until allocation fails (which traps).
fn alloc_forever() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        // Non-zero fill so every page is really written, not just reserved.
        let chunk = vec![0xA5u8; CHUNK];
        chunks.push(black_box(chunk));
    }
}

/// Unbounded recursion. The black_boxed 4 KiB frame lives on the shadow stack in
/// linear memory and the addition after the call stops tail-call elimination.
#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 4096];
    frame[(depth % 4096) as usize] = depth as u8;
    let frame = black_box(frame);
    let below = recurse(black_box(depth + 1));
    below.wrapping_add(u64::from(frame[(depth % 4096) as usize]))
}

fn big() -> Reply {
    const SIZE: usize = 512 << 20;
    reply(StatusCode::OK, "application/octet-stream", vec![b'x'; SIZE])
}

fn no_such_probe() -> Reply {
    text(StatusCode::NOT_FOUND, "no such probe")
}

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    reply(status, "text/plain; charset=utf-8", body.into())
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(FullBody::new(body.into()))
        .expect("static status and header are valid")
}

/// First value of `key` in a query string, with %XX escapes decoded.
/// `+` is left alone (these values are paths and URLs, not form data).
fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let raw = s.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (raw[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[inline(never)]
fn deep(n: u64) -> u64 {
    if black_box(n) == u64::MAX {
        return n;
    }
    black_box(deep(black_box(n + 1))) + 1
}
