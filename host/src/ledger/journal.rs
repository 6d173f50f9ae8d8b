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
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use super::MeterRecord;

/// The first segment's size. Each rotation doubles it, up to
/// [`MAX_SEGMENT_BYTES`]: a host that meters little (or a test) writes little,
/// and a busy one soon rotates rarely.
const FIRST_SEGMENT_BYTES: u64 = 1 << 20;
const MAX_SEGMENT_BYTES: u64 = 32 << 20;
/// One ingest transaction reads at most this much, so the database's write
/// lock is never held for long.
const INGEST_CHUNK: u64 = 4 << 20;
/// The unit of segment I/O besides appends: zeros written when a segment is
/// made, and bytes read while looking for the end of its lines.
const BLOCK: usize = 256 << 10;

/// The journal beside a ledger database: `<db>.journal/`.
pub fn dir_for(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

/// One segment file, locked by this process. It is written full of zeros
/// before use, so that appends overwrite blocks already allocated and
/// sized: `fdatasync` then writes only the data, where a growing file also
/// needs its inode written (two IOs per sync, not one; ~35% slower syncs on
/// this project's ext4 VMs). Lines end at the first zero byte, which JSON
/// never contains.
struct Segment {
    file: File,
    len: u64,
    capacity: u64,
}

impl Segment {
    /// A new segment of `capacity` zeros, locked, durable and named in `dir`.
    fn create(dir: &Path, capacity: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // UUIDv7: segments sort by when they were started.
        let path = dir.join(format!("{}.jsonl", uuid::Uuid::now_v7()));
        let mut file = File::create_new(&path)
            .with_context(|| format!("creating journal segment {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        // Real zeros, not `set_len`'s holes: writing into a hole allocates,
        // which is the metadata update this is here to avoid.
        let zeros = vec![0u8; BLOCK];
        let mut left = capacity;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])
                .with_context(|| format!("preparing {}", path.display()))?;
            left -= n as u64;
        }
        file.sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
        Ok(Self {
            file,
            len: 0,
            capacity,
        })
    }

    /// Writes `buf` after the last line and syncs it. On failure what may
    /// have been written is zeroed again (best effort, as cutting the file
    /// back was before) and the segment is full: nothing more goes in it.
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let written = self
            .file
            .write_all_at(buf, self.len)
            .and_then(|()| self.file.sync_data());
        if written.is_err() {
            let _ = self.file.write_all_at(&vec![0; buf.len()], self.len);
            self.capacity = self.len;
        }
        written?;
        self.len += buf.len() as u64;
        Ok(())
    }
}

/// This process's side of the journal: the segment it appends to, and the
/// next one, prepared on a thread of its own once the current one is half
/// used, so that rotating never makes a call wait for zeros to be written.
pub struct Writer {
    dir: PathBuf,
    current: Segment,
    next: Option<std::thread::JoinHandle<Result<Segment>>>,
}

impl Writer {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            current: Segment::create(dir, FIRST_SEGMENT_BYTES)?,
            next: None,
        })
    }

    /// Appends `records` as lines and syncs them: once this returns `Ok`,
    /// they are durable. On failure the segment is given up (see
    /// [`Segment::append`]): the next append goes to a new one.
    pub fn append<'a>(&mut self, records: impl IntoIterator<Item = &'a MeterRecord>) -> Result<()> {
        let mut buf = Vec::with_capacity(16 << 10);
        for r in records {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        if self.current.len + buf.len() as u64 > self.current.capacity {
            self.rotate()?;
        }
        self.current
            .append(&buf)
            .context("appending to the ledger journal")?;
        if self.next.is_none() && self.current.len >= self.current.capacity / 2 {
            let (dir, capacity) = (
                self.dir.clone(),
                (self.current.capacity * 2).clamp(FIRST_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
            );
            self.next = Some(
                std::thread::Builder::new()
                    .name("ledger-segment".into())
                    .spawn(move || Segment::create(&dir, capacity))
                    .context("starting to prepare a journal segment")?,
            );
        }
        Ok(())
    }

    /// Moves on to the prepared segment (or a new one, if none is ready to
    /// wait for). The old segment's lock goes with its file handle: it is sealed.
    fn rotate(&mut self) -> Result<()> {
        let next = match self.next.take() {
            Some(preparing) => preparing
                .join()
                .map_err(|_| anyhow::anyhow!("preparing a journal segment panicked"))??,
            None => Segment::create(&self.dir, FIRST_SEGMENT_BYTES)?,
        };
        self.current = next;
        Ok(())
    }
}

impl Drop for Writer {
    /// No thread outlives its writer: a segment still being prepared is
    /// finished, and sealed with nothing in it.
    fn drop(&mut self) {
        if let Some(preparing) = self.next.take() {
            let _ = preparing.join();
        }
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
        let (bytes, at_end) = read_lines(&mut file, offset, budget)
            .with_context(|| format!("reading {}", path.display()))?;
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
        budget -= bytes.len() as u64;
        if reached != offset {
            moved.push((name.clone(), reached));
        }
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

/// A segment's bytes from `offset` up to the end of its lines (its first
/// zero byte, or the end of the file), reading at most `budget`; and whether
/// that end was reached.
fn read_lines(file: &mut File, offset: u64, budget: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let mut bytes = Vec::new();
    let mut block = vec![0u8; BLOCK];
    file.seek(SeekFrom::Start(offset))?;
    while (bytes.len() as u64) < budget {
        let want = (budget - bytes.len() as u64).min(BLOCK as u64) as usize;
        let n = file.read(&mut block[..want])?;
        if n == 0 {
            return Ok((bytes, true));
        }
        if let Some(end) = block[..n].iter().position(|&b| b == 0) {
            bytes.extend_from_slice(&block[..end]);
            return Ok((bytes, true));
        }
        bytes.extend_from_slice(&block[..n]);
    }
    Ok((bytes, false))
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
