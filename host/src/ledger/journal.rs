//! The ledger's write-ahead journal: what a call waits on, and what the
//! `meter` table is built from.
//!
//! A call's record is appended as a JSON line to this process's journal
//! segment, and the call is released once a group `fdatasync` has covered
//! it. That is all the request path pays for: a serialised line and a share
//! of one sync. Turning lines into indexed rows (the costly part, a B-tree
//! insert per record) is done later by [`ingest`], on a thread at the lowest
//! CPU priority, so it takes idle time rather than time from calls; every
//! reader runs [`ingest`] first, so nothing durable is ever missing from a
//! report.
//!
//! Each writer owns its segment through an exclusive `flock`, released when
//! the segment is rotated or the process dies (even by `kill -9`). A segment
//! nobody holds is sealed: once ingested to its end it is deleted. How far
//! each segment is ingested is stored in the same transaction as its rows,
//! and inserts are idempotent, so ingesting twice, from two processes, or
//! again after a crash still counts each record once.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use super::MeterRecord;

/// A segment is rotated once it is this long.
const SEGMENT_BYTES: u64 = 64 << 20;
/// One ingest transaction reads at most this much, so the database's write
/// lock is never held for long.
const INGEST_CHUNK: u64 = 4 << 20;

/// The journal beside a ledger database: `<db>.journal/`.
pub fn dir_for(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

/// The segment this process appends to.
pub struct Segment {
    dir: PathBuf,
    file: File,
    len: u64,
}

impl Segment {
    /// A new segment, locked for this process, its name durable in `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // UUIDv7: segments sort by when they were started.
        let path = dir.join(format!("{}.jsonl", uuid::Uuid::now_v7()));
        let file = File::create_new(&path)
            .with_context(|| format!("creating journal segment {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            len: 0,
        })
    }

    /// Appends `records` as lines and syncs them. On failure the segment is
    /// cut back, so a record is either whole and durable or absent.
    pub fn append<'a>(&mut self, records: impl IntoIterator<Item = &'a MeterRecord>) -> Result<()> {
        let mut buf = Vec::with_capacity(16 << 10);
        for r in records {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(anyhow::Error::new(e).context("appending to the ledger journal"));
        }
        self.len += buf.len() as u64;
        if self.len >= SEGMENT_BYTES {
            // The old segment's lock goes with its file handle: it is sealed.
            *self = Self::create(&self.dir)?;
        }
        Ok(())
    }
}

/// What one ingest pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    pub records: usize,
    /// Stopped at the chunk limit with more to read.
    pub more: bool,
}

/// Ingests the journal beside `conn`'s database until it is caught up.
pub fn catch_up(conn: &Connection) -> Result<usize> {
    let Some(db) = conn.path().filter(|p| !p.is_empty()) else {
        return Ok(0);
    };
    let dir = dir_for(Path::new(db));
    let mut total = 0;
    loop {
        let pass = ingest(conn, &dir)?;
        total += pass.records;
        if !pass.more {
            return Ok(total);
        }
    }
}

/// One pass: moves up to [`INGEST_CHUNK`] of journal lines into the `meter`
/// table, and deletes segments that are sealed and fully ingested.
pub fn ingest(conn: &Connection, dir: &Path) -> Result<Ingested> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".jsonl"))
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ingested::default()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    names.sort();
    // Sealed or not is settled before the transaction: a segment about to be
    // deleted must have its rows durable first, so only then does the commit
    // sync. Otherwise the journal is still there to ingest again after a
    // power cut, and the rows and their offsets roll back together.
    let mut segments = Vec::with_capacity(names.len());
    for name in &names {
        let path = dir.join(name);
        match File::open(&path) {
            // Lockable means no writer holds it: it will not grow again.
            Ok(file) => segments.push((name, path, file.try_lock_shared().is_ok(), file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }
    let sealed_any = segments.iter().any(|s| s.2);
    conn.pragma_update(
        None,
        "synchronous",
        if sealed_any { "FULL" } else { "NORMAL" },
    )?;
    let result = ingest_segments(conn, &names, segments);
    conn.pragma_update(None, "synchronous", "FULL")?;
    result
}

fn ingest_segments(
    conn: &Connection,
    names: &[String],
    segments: Vec<(&String, PathBuf, bool, File)>,
) -> Result<Ingested> {
    // IMMEDIATE: offsets read here cannot be moved on by another process
    // before this transaction commits.
    let txn = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let offsets: HashMap<String, u64> = txn
        .prepare("SELECT segment, offset FROM journal_offsets")?
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut moved = Vec::new();
    let mut done = Vec::new();
    let mut records = Vec::new();
    let mut budget = INGEST_CHUNK;
    let mut more = false;
    for (name, path, sealed, mut file) in segments {
        let offset = offsets.get(name).copied().unwrap_or(0);
        let len = file.metadata()?.len();
        let want = len.saturating_sub(offset).min(budget);
        let mut bytes = Vec::with_capacity(want as usize);
        file.seek(SeekFrom::Start(offset))?;
        (&mut file).take(want).read_to_end(&mut bytes)?;
        // Only whole lines: a partial one is still being written, or (in a
        // sealed segment) was never synced, so its call never completed.
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for (n, line) in bytes[..whole].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            records.push(
                serde_json::from_slice::<MeterRecord>(line).with_context(|| {
                    format!(
                        "journal {} line {} after byte {offset}",
                        path.display(),
                        n + 1
                    )
                })?,
            );
        }
        let reached = offset + whole as u64;
        budget -= want;
        if reached != offset {
            moved.push((name.clone(), reached));
        }
        let at_end = offset + want == len;
        if sealed && at_end {
            done.push(path);
        } else if !at_end {
            more = true;
            break;
        }
    }
    super::insert_into(&txn, &records)?;
    {
        let mut stmt = txn.prepare_cached(
            "INSERT INTO journal_offsets (segment, offset) VALUES (?1, ?2)
             ON CONFLICT (segment) DO UPDATE SET offset = excluded.offset",
        )?;
        for (name, offset) in &moved {
            stmt.execute(params![name, *offset as i64])?;
        }
        // Segments gone from the directory were sealed and fully ingested.
        let mut forget = txn.prepare_cached("DELETE FROM journal_offsets WHERE segment = ?1")?;
        for name in offsets.keys().filter(|n| !names.contains(n)) {
            forget.execute([name])?;
        }
    }
    txn.commit()?;
    for path in done {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing an ingested journal segment")
            }
        }
    }
    Ok(Ingested {
        records: records.len(),
        more,
    })
}

/// Runs the calling thread only when a CPU would otherwise idle
/// (`SCHED_IDLE`): ingesting is deferred work and must not delay calls.
/// (Even nice 19 can hold a waking worker back for a time slice.)
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: a syscall on the calling thread (pid 0), with a valid param.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "SCHED_IDLE for the ingester");
        }
    }
}
