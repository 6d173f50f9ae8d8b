//! The ledger survives `kill -9`: clients drive load, the host is killed
//! mid-flight and restarted, over and over. Every response a client received
//! whole with a 2xx has exactly one record (found by `x-request-id`), and no
//! record is duplicated. `EDGEINFER_CRASH_ROUNDS` sets the rounds (default
//! 10); tests/bench/crash-soak.sh runs many more.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{App, artifacts, component, manifest};

const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_received_response_has_exactly_one_record_across_kill_9() {
    let rounds: usize = std::env::var("EDGEINFER_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let app = || {
        App::new(manifest(&format!(
            "{}{}",
            component("hello", "/hello", artifacts::HELLO),
            component("probe", "/probe/...", artifacts::PROBE)
        )))
    };
    let mut dir = app().write();
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut per_round = Vec::new();
    for round in 0..rounds {
        let host = app().start_in(dir).await;
        let before = received.lock().unwrap().len();
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (client, base, received) =
                (host.client.clone(), host.base.clone(), received.clone());
            clients.push(tokio::spawn(async move {
                // Mix quick calls with ones that are mid-flight for a while.
                let path = if c % 2 == 0 {
                    "/hello"
                } else {
                    "/probe/sleep?ms=20"
                };
                loop {
                    let Ok(r) = client.get(format!("{base}{path}")).send().await else {
                        return;
                    };
                    let ok = r.status().is_success();
                    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
                    // Received means the whole body arrived.
                    if r.bytes().await.is_err() {
                        return;
                    }
                    if ok {
                        received.lock().unwrap().push(id);
                    }
                }
            }));
        }
        // Kill at a different point of the load each round.
        tokio::time::sleep(Duration::from_millis(150 + 70 * (round as u64 % 7))).await;
        dir = host.kill9();
        for c in clients {
            c.await.unwrap();
        }
        per_round.push(received.lock().unwrap().len() - before);
    }

    // The records, read by the CLI from the ledger the killed hosts wrote.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for record in common::events(dir.path()) {
        *counts
            .entry(record["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let received = received.lock().unwrap();
    let distinct: BTreeSet<&String> = received.iter().collect();
    assert_eq!(distinct.len(), received.len(), "request ids are unique");
    let missing: Vec<&&String> = distinct
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    let duplicated: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "crash test: {rounds} kill -9 rounds, {} responses received whole with 2xx \
         (per round {per_round:?}), {} records in the ledger ({} of calls cut off by the kill), \
         {} received without a record, {} duplicated",
        received.len(),
        counts.len(),
        counts.len().saturating_sub(received.len()),
        missing.len(),
        duplicated.len()
    );
    assert!(
        per_round.iter().all(|n| *n > 0),
        "every round served calls before the kill: {per_round:?}"
    );
    assert!(missing.is_empty(), "received but not recorded: {missing:?}");
    assert!(duplicated.is_empty(), "duplicated records: {duplicated:?}");
}
