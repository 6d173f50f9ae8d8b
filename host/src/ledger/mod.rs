//! The durable per-call ledger: one meter record per call, each durable
//! before its response's last byte goes out (see [`crate::metering`]). The
//! id is the primary key and inserts are idempotent, so a record replayed
//! after a crash or by a retrying writer is still counted once.
//!
//! [`Ledger`] is what callers see; [`SqliteLedger`] is the one-node
//! implementation: a group-synced [`journal`] that calls wait on, ingested
//! into SQLite (WAL mode, in the state dir) at idle priority. A fleet ledger
//! (PostgreSQL) implements the same trait with `INSERT … ON CONFLICT DO
//! NOTHING` and needs no change in its callers.

pub mod journal;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures::channel::oneshot;
use futures::future::BoxFuture;
use rusqlite::{Connection, params};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One call, as CONTRACTS.md lists the fields. Times are RFC 3339 (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterRecord {
    /// UUIDv7, the response's `x-request-id`.
    pub id: String,
    pub node: String,
    pub tenant: Option<String>,
    pub key_id: Option<String>,
    pub component: String,
    pub component_digest: String,
    pub model: Option<String>,
    pub model_digest: Option<String>,
    pub route: String,
    pub started_at: String,
    pub ended_at: String,
    pub wall_us: u64,
    pub queue_us: u64,
    pub billed_ms: u64,
    pub fuel: u64,
    pub nn_compute_us: u64,
    pub nn_backend: Option<String>,
    pub max_memory_bytes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cold_start: bool,
    pub status: u16,
    pub outcome: Outcome,
    /// What the call costs under the pricing in force when it ran (0 when
    /// rejected), exact to [`crate::billing::AMOUNT_SCALE`] places.
    pub amount: Decimal,
    pub currency: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Trap,
    Timeout,
    Oom,
    Rejected,
    ClientError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Trap => "trap",
            Outcome::Timeout => "timeout",
            Outcome::Oom => "oom",
            Outcome::Rejected => "rejected",
            Outcome::ClientError => "client_error",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ok" => Outcome::Ok,
            "trap" => Outcome::Trap,
            "timeout" => Outcome::Timeout,
            "oom" => Outcome::Oom,
            "rejected" => Outcome::Rejected,
            "client_error" => Outcome::ClientError,
            other => anyhow::bail!("unknown outcome `{other}` in the ledger"),
        })
    }

    pub fn billable(self) -> bool {
        self != Outcome::Rejected
    }
}

/// Which records to read: `started_at` in [from, to), optionally one tenant.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Unix microseconds.
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub tenant: Option<String>,
}

/// Where meter records go. `append` resolves once the record is durable.
pub trait Ledger: Send + Sync {
    fn append(&self, record: MeterRecord) -> BoxFuture<'static, Result<()>>;
    /// Records matching `query`, oldest first. Blocking.
    fn records(&self, query: &Query) -> Result<Vec<MeterRecord>>;
}

/// The default ledger file in a state dir.
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join("edgeinfer.db")
}

/// Opens (creating if needed) the database holding the ledger, tenants and keys.
pub fn open(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL: readers (reports, the key ring) never block the writer. FULL:
    // a commit is on disk when it returns, so a record outlives a power cut,
    // not only a killed process.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA)
        .with_context(|| format!("preparing the schema in {}", path.display()))?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meter (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    tenant TEXT,
    key_id TEXT,
    component TEXT NOT NULL,
    component_digest TEXT NOT NULL,
    model TEXT,
    model_digest TEXT,
    route TEXT NOT NULL,
    started_us INTEGER NOT NULL,
    ended_us INTEGER NOT NULL,
    wall_us INTEGER NOT NULL,
    queue_us INTEGER NOT NULL,
    billed_ms INTEGER NOT NULL,
    fuel INTEGER NOT NULL,
    nn_compute_us INTEGER NOT NULL,
    nn_backend TEXT,
    max_memory_bytes INTEGER NOT NULL,
    bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    cold_start INTEGER NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal_offsets (
    segment TEXT PRIMARY KEY,
    offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    requests_per_minute INTEGER,
    monthly_cap TEXT
);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    components TEXT,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
";

/// SQLite in WAL mode behind a journal: one thread appends and syncs
/// records in groups, another ingests them into the database at idle priority.
pub struct SqliteLedger {
    path: PathBuf,
    tx: mpsc::Sender<Pending>,
}

struct Pending {
    record: MeterRecord,
    done: oneshot::Sender<Result<()>>,
}

/// Records per sync at most; under load a group fills while the previous
/// one syncs, so one `fdatasync` covers many calls.
const MAX_BATCH: usize = 1024;
/// Syncs start at least this far apart. An idle writer syncs a record at
/// once; a busy one covers all that came in the meantime with one sync.
/// Short, because a closed-loop client waits out the whole interval: a fixed
/// 2 ms commit delay parked most calls at 32 connections and halved
/// throughput while the CPUs idled.
const SYNC_INTERVAL: Duration = Duration::from_micros(250);

/// A sync this slow is logged: the disk, not the host, held those calls up.
const SLOW_SYNC: Duration = Duration::from_millis(50);

/// How often the ingester looks for new lines: rarely enough that each pass
/// is one large transaction, often enough that the journal stays short.
const INGEST_EVERY: Duration = Duration::from_millis(250);

impl SqliteLedger {
    /// Opens the database, ingests whatever an earlier process left in the
    /// journal, and starts this process's writer and ingester.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = open(path)?;
        journal::catch_up(&conn)
            .with_context(|| format!("ingesting the journal of {}", path.display()))?;
        let journal = journal::Writer::open(&journal::dir_for(path))?;
        let (tx, rx) = mpsc::channel::<Pending>();
        // Closed when the writer ends, which tells the ingester to stop.
        let (stopped, stop) = mpsc::sync_channel::<()>(1);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("ledger".into())
            .spawn(move || write_loop(journal, rx, stopped, &shown))
            .context("starting the ledger writer")?;
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("ledger-ingest".into())
            .spawn(move || ingest_loop(conn, stop, &shown))
            .context("starting the ledger ingester")?;
        Ok(Self {
            path: path.to_path_buf(),
            tx,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_loop(
    mut journal: journal::Writer,
    rx: mpsc::Receiver<Pending>,
    stopped: mpsc::SyncSender<()>,
    path: &str,
) {
    // When the next sync may start.
    let mut next_sync = Instant::now();
    while let Ok(first) = rx.recv() {
        if let Some(wait) = next_sync.checked_duration_since(Instant::now()) {
            // Asleep, not waiting on the queue: senders to a waiting receiver
            // would each pay a wake-up.
            std::thread::sleep(wait);
        }
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        let started = Instant::now();
        next_sync = started + SYNC_INTERVAL;
        let result = journal.append(batch.iter().map(|p| &p.record));
        let took = started.elapsed();
        if took >= SLOW_SYNC {
            // Every call in the group waited this long: worth a line.
            tracing::warn!(
                ledger = path,
                ms = took.as_millis() as u64,
                records = batch.len(),
                "slow ledger sync"
            );
        }
        if let Err(e) = &result {
            tracing::error!(
                ledger = path,
                error = format!("{e:#}"),
                records = batch.len(),
                "ledger append failed"
            );
        }
        for p in batch {
            let _ = p.done.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(anyhow::anyhow!("ledger append failed: {e:#}")),
            });
        }
    }
    drop(stopped);
}

fn ingest_loop(conn: Connection, stop: mpsc::Receiver<()>, path: &str) {
    journal::lower_priority();
    let dir = journal::dir_for(Path::new(path));
    loop {
        match journal::ingest(&conn, &dir) {
            Ok(pass) if pass.more => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(
                ledger = path,
                error = format!("{e:#}"),
                "ingesting the journal"
            ),
        }
        if let Err(mpsc::RecvTimeoutError::Disconnected) = stop.recv_timeout(INGEST_EVERY) {
            return;
        }
    }
}

/// Inserts in one transaction; a record already present is left as it is.
pub fn insert_all<'a>(
    conn: &mut Connection,
    records: impl IntoIterator<Item = &'a MeterRecord>,
) -> Result<()> {
    let txn = conn.transaction()?;
    insert_into(&txn, records)?;
    txn.commit()?;
    Ok(())
}

/// Inserts within the caller's transaction, idempotently.
fn insert_into<'a>(
    conn: &Connection,
    records: impl IntoIterator<Item = &'a MeterRecord>,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO meter (id, node, tenant, key_id, component, component_digest, model,
            model_digest, route, started_us, ended_us, wall_us, queue_us, billed_ms, fuel,
            nn_compute_us, nn_backend, max_memory_bytes, bytes_in, bytes_out, cold_start,
            status, outcome, amount, currency)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
            ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)
         ON CONFLICT (id) DO NOTHING",
    )?;
    for r in records {
        stmt.execute(params![
            r.id,
            r.node,
            r.tenant,
            r.key_id,
            r.component,
            r.component_digest,
            r.model,
            r.model_digest,
            r.route,
            micros(&r.started_at)?,
            micros(&r.ended_at)?,
            r.wall_us as i64,
            r.queue_us as i64,
            r.billed_ms as i64,
            r.fuel as i64,
            r.nn_compute_us as i64,
            r.nn_backend,
            r.max_memory_bytes as i64,
            r.bytes_in as i64,
            r.bytes_out as i64,
            r.cold_start,
            r.status,
            r.outcome.as_str(),
            r.amount.to_string(),
            r.currency,
        ])?;
    }
    Ok(())
}

impl Ledger for SqliteLedger {
    fn append(&self, record: MeterRecord) -> BoxFuture<'static, Result<()>> {
        let (done, wait) = oneshot::channel();
        let sent = self.tx.send(Pending { record, done });
        Box::pin(async move {
            sent.map_err(|_| anyhow::anyhow!("the ledger writer has stopped"))?;
            wait.await
                .map_err(|_| anyhow::anyhow!("the ledger writer has stopped"))?
        })
    }

    fn records(&self, query: &Query) -> Result<Vec<MeterRecord>> {
        let conn = open(&self.path)?;
        read_records(&conn, query)
    }
}

/// Records matching `query` from an open ledger database, oldest first.
/// The journal is ingested first, so every durable record is seen.
pub fn read_records(conn: &Connection, query: &Query) -> Result<Vec<MeterRecord>> {
    journal::catch_up(conn).context("ingesting the ledger journal")?;
    let mut stmt = conn.prepare(
        "SELECT id, node, tenant, key_id, component, component_digest, model, model_digest,
            route, started_us, ended_us, wall_us, queue_us, billed_ms, fuel, nn_compute_us,
            nn_backend, max_memory_bytes, bytes_in, bytes_out, cold_start, status, outcome,
            amount, currency
         FROM meter
         WHERE id >= ?4 AND id < ?5
           AND started_us >= ?1 AND started_us < ?2 AND (?3 IS NULL OR tenant = ?3)
         ORDER BY started_us, id",
    )?;
    let rows = stmt.query_map(
        params![
            query.from_us.unwrap_or(i64::MIN),
            query.to_us.unwrap_or(i64::MAX),
            query.tenant,
            query
                .from_us
                .map_or(String::new(), |us| id_bound(us - 1_000_000)),
            query
                .to_us
                .map_or("~".to_string(), |us| id_bound(us + 1_000_000)),
        ],
        |row| {
            Ok((
                (
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, Option<String>>(6)?,
                    row.get::<_, Option<String>>(7)?,
                    row.get::<_, String>(8)?,
                ),
                (
                    row.get::<_, i64>(9)?,
                    row.get::<_, i64>(10)?,
                    row.get::<_, i64>(11)?,
                    row.get::<_, i64>(12)?,
                    row.get::<_, i64>(13)?,
                    row.get::<_, i64>(14)?,
                    row.get::<_, i64>(15)?,
                    row.get::<_, Option<String>>(16)?,
                    row.get::<_, i64>(17)?,
                    row.get::<_, i64>(18)?,
                    row.get::<_, i64>(19)?,
                ),
                (
                    row.get::<_, bool>(20)?,
                    row.get::<_, u16>(21)?,
                    row.get::<_, String>(22)?,
                    row.get::<_, String>(23)?,
                    row.get::<_, String>(24)?,
                ),
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (
            (id, node, tenant, key_id, component, component_digest, model, model_digest, route),
            (
                started,
                ended,
                wall_us,
                queue_us,
                billed_ms,
                fuel,
                nn_compute_us,
                nn_backend,
                max_memory_bytes,
                bytes_in,
                bytes_out,
            ),
            (cold_start, status, outcome, amount, currency),
        ) = row?;
        let amount = amount
            .parse()
            .with_context(|| format!("amount `{amount}` of record {id}"))?;
        out.push(MeterRecord {
            id,
            node,
            tenant,
            key_id,
            component,
            component_digest,
            model,
            model_digest,
            route,
            started_at: rfc3339(started),
            ended_at: rfc3339(ended),
            wall_us: wall_us as u64,
            queue_us: queue_us as u64,
            billed_ms: billed_ms as u64,
            fuel: fuel as u64,
            nn_compute_us: nn_compute_us as u64,
            nn_backend,
            max_memory_bytes: max_memory_bytes as u64,
            bytes_in: bytes_in as u64,
            bytes_out: bytes_out as u64,
            cold_start,
            status,
            outcome: Outcome::parse(&outcome)?,
            amount,
            currency,
        });
    }
    Ok(out)
}

/// The smallest UUIDv7 text minted at `us` (Unix µs): its first 12 hex
/// digits are the millisecond. Ids are minted when a call arrives, so a time
/// range is a range of the primary key, and the ledger needs no other index
/// (each one would cost every insert a B-tree write). Callers widen the
/// range by a second and filter on `started_us` exactly.
fn id_bound(us: i64) -> String {
    let ms = us.div_euclid(1000).clamp(0, 0xffff_ffff_ffff);
    let hex = format!("{ms:012x}");
    format!("{}-{}", &hex[..8], &hex[8..])
}

/// Unix microseconds as RFC 3339 with microseconds, UTC.
pub fn rfc3339(us: i64) -> String {
    match jiff::Timestamp::from_microsecond(us) {
        Ok(t) => format!("{t:.6}"),
        Err(_) => us.to_string(),
    }
}

/// RFC 3339 back to Unix microseconds.
pub fn micros(s: &str) -> Result<i64> {
    let t: jiff::Timestamp = s.parse().with_context(|| format!("timestamp `{s}`"))?;
    Ok(t.as_microsecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record started at `us`, with a UUIDv7 minted then (as the host does).
    pub(crate) fn record_at(us: i64) -> MeterRecord {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            (us / 1_000_000) as u64,
            ((us % 1_000_000) * 1000) as u32,
        );
        let mut r = record(&uuid::Uuid::new_v7(ts).to_string());
        r.started_at = rfc3339(us);
        r.ended_at = rfc3339(us + 1500);
        r
    }

    pub(crate) fn record(id: &str) -> MeterRecord {
        MeterRecord {
            id: id.into(),
            node: "n1".into(),
            tenant: Some("acme".into()),
            key_id: Some("k1".into()),
            component: "digits".into(),
            component_digest: "abc".into(),
            model: Some("digits".into()),
            model_digest: None,
            route: "/models/digits".into(),
            started_at: rfc3339(1_700_000_000_000_000),
            ended_at: rfc3339(1_700_000_000_001_500),
            wall_us: 1500,
            queue_us: 3,
            billed_ms: 2,
            fuel: 12345,
            nn_compute_us: 0,
            nn_backend: None,
            max_memory_bytes: 1 << 20,
            bytes_in: 10,
            bytes_out: 20,
            cold_start: false,
            status: 200,
            outcome: Outcome::Ok,
            amount: "0.000000212".parse().unwrap(),
            currency: "USD".into(),
        }
    }

    #[tokio::test]
    async fn a_replayed_insert_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let ledger = SqliteLedger::open(&path).unwrap();
        let r = record("0190-a");
        ledger.append(r.clone()).await.unwrap();
        // The same record again, as a writer retrying after a crash would.
        ledger.append(r.clone()).await.unwrap();
        let mut changed = r.clone();
        changed.fuel = 1;
        ledger.append(changed).await.unwrap();
        // And through a second connection, as another process would.
        insert_all(&mut open(&path).unwrap(), [&r]).unwrap();
        let all = ledger.records(&Query::default()).unwrap();
        assert_eq!(all, vec![r], "one record, unchanged by the replays");
    }

    /// A temporary dir (kept alive by the first value), a ledger path in
    /// it, and the journal beside that ledger.
    fn scratch_journal() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("l.db");
        let jdir = journal::dir_for(&db);
        (dir, db, jdir)
    }

    /// What a killed host leaves: synced lines, then half a line it was
    /// writing. Ingesting (twice, as two processes might) counts each whole
    /// line once, drops the torn one, and removes the sealed segment.
    #[test]
    fn a_dead_writers_journal_is_ingested_once() {
        let (_dir, db, jdir) = scratch_journal();
        let (a, b) = (record("0190-a"), record("0190-b"));
        let mut writer = journal::Writer::open(&jdir).unwrap();
        writer.append([&a, &b]).unwrap();
        drop(writer);
        let torn = std::fs::read_dir(&jdir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        // Where the writer would have gone on: after the last line, over
        // the segment's zeros.
        let written = std::fs::read(&torn).unwrap();
        let end = written.iter().position(|&b| b == 0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new().write(true).open(&torn).unwrap(),
            br#"{"id":"0190-c","node""#,
            end as u64,
        )
        .unwrap();
        let conn = open(&db).unwrap();
        assert_eq!(journal::catch_up(&conn).unwrap(), 2);
        assert_eq!(journal::catch_up(&open(&db).unwrap()).unwrap(), 0);
        assert_eq!(read_records(&conn, &Query::default()).unwrap(), vec![a, b]);
        assert_eq!(
            std::fs::read_dir(&jdir).unwrap().count(),
            0,
            "sealed segment removed"
        );
    }

    /// A segment whose writer is alive is read up to its last whole line and
    /// kept; what the writer appends later is picked up from there.
    #[test]
    fn a_live_segment_is_followed_not_removed() {
        let (_dir, db, jdir) = scratch_journal();
        let mut writer = journal::Writer::open(&jdir).unwrap();
        writer.append([&record("0190-a")]).unwrap();
        let conn = open(&db).unwrap();
        assert_eq!(journal::catch_up(&conn).unwrap(), 1);
        writer.append([&record("0190-b")]).unwrap();
        assert_eq!(journal::catch_up(&conn).unwrap(), 1);
        assert_eq!(
            std::fs::read_dir(&jdir).unwrap().count(),
            1,
            "live segment kept"
        );
        drop(writer);
        assert_eq!(journal::catch_up(&conn).unwrap(), 0);
        assert_eq!(std::fs::read_dir(&jdir).unwrap().count(), 0);
        assert_eq!(read_records(&conn, &Query::default()).unwrap().len(), 2);
    }

    /// Appends that outgrow a segment go on in the next one, prepared while
    /// the first filled; every record is ingested once, and every sealed
    /// segment removed.
    #[test]
    fn records_span_rotated_segments() {
        let (_dir, db, jdir) = scratch_journal();
        let mut writer = journal::Writer::open(&jdir).unwrap();
        let records: Vec<_> = (0..6000).map(|i| record(&format!("0190-{i:05}"))).collect();
        for batch in records.chunks(200) {
            writer.append(batch).unwrap();
        }
        let segments = std::fs::read_dir(&jdir).unwrap().count();
        assert!(segments >= 2, "{segments} segment(s) for 6000 records");
        let conn = open(&db).unwrap();
        assert_eq!(journal::catch_up(&conn).unwrap(), records.len());
        drop(writer);
        assert_eq!(journal::catch_up(&conn).unwrap(), 0);
        assert_eq!(std::fs::read_dir(&jdir).unwrap().count(), 0);
        // Oldest first, then by id: the order they were written in.
        assert_eq!(read_records(&conn, &Query::default()).unwrap(), records);
    }

    #[tokio::test]
    async fn records_round_trip_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("l.db")).unwrap();
        let mut a = record_at(1_700_000_000_000_000);
        a.tenant = Some("a".into());
        let mut b = record_at(1_700_000_100_000_000);
        b.tenant = Some("b".into());
        futures::future::try_join(ledger.append(a.clone()), ledger.append(b.clone()))
            .await
            .unwrap();
        let only_b = ledger
            .records(&Query {
                tenant: Some("b".into()),
                ..Query::default()
            })
            .unwrap();
        assert_eq!(only_b, vec![b.clone()]);
        let before_b = ledger
            .records(&Query {
                to_us: Some(micros(&b.started_at).unwrap()),
                ..Query::default()
            })
            .unwrap();
        assert_eq!(before_b, vec![a]);
    }
}
