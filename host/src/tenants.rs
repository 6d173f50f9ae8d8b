//! Tenants and API keys: created and revoked by the CLI, checked by the host
//! on every app call, and the per-tenant quotas (requests per minute, monthly
//! spend cap).
//!
//! A key is `ei_<id>_<secret>`: the id finds the row, and only
//! sha256(salt ‖ secret) is stored. Secrets are 256 random bits, so a fast
//! salted hash is enough; a slow password hash would cost every request
//! milliseconds and add nothing against guessing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};
use rust_decimal::Decimal;
use serde::Serialize;
use sha2::{Digest, Sha256};

const KEY_PREFIX: &str = "ei_";

/// A tenant's limits; `None` is unlimited.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TenantLimits {
    pub requests_per_minute: Option<u32>,
    pub monthly_cap: Option<Decimal>,
}

pub fn create_tenant(conn: &Connection, name: &str, limits: &TenantLimits) -> Result<()> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        bail!("a tenant name must be 1 to 128 printable characters");
    }
    let inserted = conn.execute(
        "INSERT INTO tenants (name, created_at, requests_per_minute, monthly_cap)
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO NOTHING",
        params![
            name,
            now_rfc3339(),
            limits.requests_per_minute,
            limits.monthly_cap.map(|d| d.to_string())
        ],
    )?;
    if inserted == 0 {
        bail!("tenant `{name}` already exists");
    }
    Ok(())
}

/// A new key for `tenant`, limited to `components` if any are given.
/// Returns the key id and the whole key, which is shown once and never stored.
pub fn create_key(
    conn: &Connection,
    tenant: &str,
    components: &[String],
) -> Result<(String, String)> {
    let exists: Option<String> = conn
        .query_row("SELECT name FROM tenants WHERE name = ?1", [tenant], |r| {
            r.get(0)
        })
        .optional()?;
    if exists.is_none() {
        bail!("no tenant `{tenant}`; create it with `edgeinfer tenants create {tenant}`");
    }
    let id = hex::encode(random::<6>()?);
    let secret = hex::encode(random::<32>()?);
    let salt = random::<16>()?;
    let hash = digest(&salt, &secret);
    let scope = (!components.is_empty()).then(|| components.join(","));
    conn.execute(
        "INSERT INTO keys (id, tenant, salt, hash, components, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, tenant, &salt[..], &hash[..], scope, now_rfc3339()],
    )?;
    Ok((id.clone(), format!("{KEY_PREFIX}{id}_{secret}")))
}

pub fn revoke_key(conn: &Connection, id: &str) -> Result<()> {
    let changed = conn.execute(
        "UPDATE keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, now_rfc3339()],
    )?;
    if changed == 0 {
        let known: Option<String> = conn
            .query_row("SELECT id FROM keys WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        match known {
            Some(_) => bail!("key {id} is already revoked"),
            None => bail!("no key with id {id}"),
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: String,
    /// `None`: every component.
    pub components: Option<Vec<String>>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

pub fn list_keys(conn: &Connection) -> Result<Vec<KeyInfo>> {
    let mut stmt = conn.prepare(
        "SELECT id, tenant, components, created_at, revoked_at FROM keys ORDER BY created_at, id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(KeyInfo {
            id: r.get(0)?,
            tenant: r.get(1)?,
            components: r
                .get::<_, Option<String>>(2)?
                .map(|s| s.split(',').map(str::to_string).collect()),
            created_at: r.get(3)?,
            revoked_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    Ok(b)
}

fn digest(salt: &[u8], secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().into()
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// Who is calling, once their key checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: String,
    pub key_id: String,
    /// The components the key may call; `None`: all.
    pub components: Option<Vec<String>>,
}

/// Why a call was turned away before it ran.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Denied {
    #[error("this app requires an API key: send `Authorization: Bearer KEY`")]
    Missing,
    #[error("the API key is not valid")]
    BadKey,
    #[error("API key {0} has been revoked")]
    Revoked(String),
    #[error("API key {key_id} may not call component `{component}`")]
    NotAllowed { key_id: String, component: String },
    #[error("tenant `{tenant}` is over its quota of {limit} requests per minute")]
    RateLimited {
        tenant: String,
        limit: u32,
        retry_after_secs: u64,
    },
    #[error("tenant `{tenant}` has reached its monthly spend cap of {cap}")]
    SpendCap {
        tenant: String,
        cap: Decimal,
        retry_after_secs: u64,
    },
}

impl Denied {
    pub fn status(&self) -> u16 {
        match self {
            Denied::Missing | Denied::BadKey | Denied::Revoked(_) => 401,
            Denied::NotAllowed { .. } => 403,
            Denied::RateLimited { .. } | Denied::SpendCap { .. } => 429,
        }
    }

    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Denied::RateLimited {
                retry_after_secs, ..
            }
            | Denied::SpendCap {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

struct KeyEntry {
    tenant: String,
    salt: Vec<u8>,
    hash: Vec<u8>,
    components: Option<Vec<String>>,
    revoked: bool,
}

#[derive(Default)]
struct Snapshot {
    keys: HashMap<String, KeyEntry>,
    tenants: HashMap<String, TenantLimits>,
}

/// Per-tenant usage that quotas are checked against.
#[derive(Default)]
struct TenantUsage {
    /// Unix minute of the current rate window, and calls admitted in it.
    minute: i64,
    calls: u32,
    /// (year, month) the spend is for.
    month: (i16, i8),
    spent: Decimal,
}

/// The host's view of keys and tenants: a snapshot of the database, taken
/// again whenever another connection (the CLI) changes it.
pub struct KeyRing {
    snapshot: RwLock<Snapshot>,
    usage: Mutex<HashMap<String, TenantUsage>>,
}

/// How often the host looks for key changes made by the CLI.
pub const REFRESH: Duration = Duration::from_millis(200);

impl KeyRing {
    /// Loads the keys in `db` and keeps following it. This month's spend per
    /// tenant is read from the ledger, so a restart does not reset the cap.
    pub fn open(db: &Path) -> Result<Arc<Self>> {
        let conn = crate::ledger::open(db)?;
        let ring = Arc::new(Self {
            snapshot: RwLock::new(load(&conn)?),
            usage: Mutex::new(HashMap::new()),
        });
        let (month_start, month) = month_start_us(jiff::Timestamp::now());
        let spent = crate::ledger::read_records(
            &conn,
            &crate::ledger::Query {
                from_us: Some(month_start),
                ..Default::default()
            },
        )?;
        {
            let mut usage = ring.usage.lock().expect("usage lock");
            for r in spent {
                if let Some(t) = r.tenant {
                    let u = usage.entry(t).or_default();
                    u.month = month;
                    u.spent += r.amount;
                }
            }
        }
        let weak = Arc::downgrade(&ring);
        let path = db.to_path_buf();
        std::thread::Builder::new()
            .name("keyring".into())
            .spawn(move || follow(conn, weak, path))
            .context("starting the key watcher")?;
        Ok(ring)
    }

    /// Checks the `Authorization` header for a call to `component`. With no
    /// keys at all, the app is open and the caller anonymous (`None`).
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        component: &str,
    ) -> Result<Option<Caller>, Denied> {
        let caller = self.identify(authorization)?;
        if let Some(c) = &caller
            && let Some(allowed) = &c.components
            && !allowed.iter().any(|a| a == component)
        {
            return Err(Denied::NotAllowed {
                key_id: c.key_id.clone(),
                component: component.to_string(),
            });
        }
        Ok(caller)
    }

    /// Whose key the `Authorization` header carries; `None` when no keys exist.
    pub fn identify(&self, authorization: Option<&str>) -> Result<Option<Caller>, Denied> {
        let snap = self.snapshot.read().expect("key lock");
        if snap.keys.is_empty() {
            return Ok(None);
        }
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(Denied::Missing)?;
        let (id, secret) = token
            .strip_prefix(KEY_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .ok_or(Denied::BadKey)?;
        let entry = snap.keys.get(id).ok_or(Denied::BadKey)?;
        if digest(&entry.salt, secret)[..] != entry.hash[..] {
            return Err(Denied::BadKey);
        }
        if entry.revoked {
            return Err(Denied::Revoked(id.to_string()));
        }
        Ok(Some(Caller {
            tenant: entry.tenant.clone(),
            key_id: id.to_string(),
            components: entry.components.clone(),
        }))
    }

    /// Counts a call against the tenant's quotas, or says which one it is over.
    pub fn admit(&self, tenant: &str) -> Result<(), Denied> {
        let limits = self
            .snapshot
            .read()
            .expect("key lock")
            .tenants
            .get(tenant)
            .cloned()
            .unwrap_or_default();
        let now = jiff::Timestamp::now();
        let mut usage = self.usage.lock().expect("usage lock");
        let u = usage.entry(tenant.to_string()).or_default();
        let (month_start, month) = month_start_us(now);
        if u.month != month {
            u.month = month;
            u.spent = Decimal::ZERO;
        }
        if let Some(cap) = limits.monthly_cap
            && u.spent >= cap
        {
            let next = next_month_start_us(month_start);
            return Err(Denied::SpendCap {
                tenant: tenant.to_string(),
                cap,
                retry_after_secs: secs_until(now, next),
            });
        }
        let minute = now.as_second().div_euclid(60);
        if u.minute != minute {
            u.minute = minute;
            u.calls = 0;
        }
        if let Some(limit) = limits.requests_per_minute
            && u.calls >= limit
        {
            return Err(Denied::RateLimited {
                tenant: tenant.to_string(),
                limit,
                retry_after_secs: (60 - now.as_second().rem_euclid(60)).max(1) as u64,
            });
        }
        u.calls += 1;
        Ok(())
    }

    /// Adds a metered call's amount to its tenant's spend this month.
    pub fn spend(&self, tenant: &str, amount: Decimal) {
        let (_, month) = month_start_us(jiff::Timestamp::now());
        let mut usage = self.usage.lock().expect("usage lock");
        let u = usage.entry(tenant.to_string()).or_default();
        if u.month != month {
            u.month = month;
            u.spent = Decimal::ZERO;
        }
        u.spent += amount;
    }

    fn reload(&self, conn: &Connection) -> Result<()> {
        let fresh = load(conn)?;
        *self.snapshot.write().expect("key lock") = fresh;
        Ok(())
    }
}

/// Re-reads keys and tenants whenever another connection has written.
fn follow(conn: Connection, ring: Weak<KeyRing>, path: PathBuf) {
    let version = |c: &Connection| -> Option<i64> {
        c.query_row("PRAGMA data_version", [], |r| r.get(0)).ok()
    };
    let mut seen = version(&conn);
    loop {
        std::thread::sleep(REFRESH);
        let Some(ring) = ring.upgrade() else {
            return;
        };
        let now = version(&conn);
        if now != seen {
            seen = now;
            if let Err(e) = ring.reload(&conn) {
                tracing::warn!(db = %path.display(), error = format!("{e:#}"), "re-reading API keys failed; keeping the previous ones");
            }
        }
    }
}

fn load(conn: &Connection) -> Result<Snapshot> {
    let mut snap = Snapshot::default();
    let mut stmt =
        conn.prepare("SELECT id, tenant, salt, hash, components, revoked_at FROM keys")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            KeyEntry {
                tenant: r.get(1)?,
                salt: r.get(2)?,
                hash: r.get(3)?,
                components: r
                    .get::<_, Option<String>>(4)?
                    .map(|s| s.split(',').map(str::to_string).collect()),
                revoked: r.get::<_, Option<String>>(5)?.is_some(),
            },
        ))
    })?;
    for row in rows {
        let (id, entry) = row?;
        snap.keys.insert(id, entry);
    }
    let mut stmt = conn.prepare("SELECT name, requests_per_minute, monthly_cap FROM tenants")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<u32>>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    for row in rows {
        let (name, rpm, cap) = row?;
        let monthly_cap = cap
            .map(|c| c.parse::<Decimal>())
            .transpose()
            .with_context(|| format!("monthly cap of tenant `{name}`"))?;
        snap.tenants.insert(
            name,
            TenantLimits {
                requests_per_minute: rpm,
                monthly_cap,
            },
        );
    }
    Ok(snap)
}

/// The start of `now`'s month (UTC) in Unix microseconds, and (year, month).
fn month_start_us(now: jiff::Timestamp) -> (i64, (i16, i8)) {
    let d = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let start = jiff::civil::date(d.year(), d.month(), 1)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_microsecond())
        .unwrap_or(0);
    (start, (d.year(), d.month()))
}

fn next_month_start_us(month_start_us: i64) -> i64 {
    jiff::Timestamp::from_microsecond(month_start_us)
        .ok()
        .and_then(|t| {
            t.to_zoned(jiff::tz::TimeZone::UTC)
                .checked_add(jiff::Span::new().months(1))
                .ok()
        })
        .map(|z| z.timestamp().as_microsecond())
        .unwrap_or(month_start_us)
}

fn secs_until(now: jiff::Timestamp, us: i64) -> u64 {
    ((us - now.as_microsecond()) / 1_000_000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::ledger::open(&dir.path().join("db")).unwrap();
        (dir, conn)
    }

    #[test]
    fn keys_check_out_and_revoke() {
        let (dir, conn) = db();
        create_tenant(&conn, "acme", &TenantLimits::default()).unwrap();
        assert!(create_tenant(&conn, "acme", &TenantLimits::default()).is_err());
        assert!(create_key(&conn, "nobody", &[]).is_err());
        let (id, key) = create_key(&conn, "acme", &["digits".into()]).unwrap();
        let ring = KeyRing::open(&dir.path().join("db")).unwrap();
        let bearer = format!("Bearer {key}");
        let caller = ring.authorize(Some(&bearer), "digits").unwrap().unwrap();
        assert_eq!(
            (caller.tenant.as_str(), caller.key_id.as_str()),
            ("acme", id.as_str())
        );
        assert!(matches!(
            ring.authorize(None, "digits"),
            Err(Denied::Missing)
        ));
        let wrong = format!("Bearer {}x", &key[..key.len() - 1]);
        assert!(matches!(
            ring.authorize(Some(&wrong), "digits"),
            Err(Denied::BadKey)
        ));
        assert!(matches!(
            ring.authorize(Some(&bearer), "filetype"),
            Err(Denied::NotAllowed { .. })
        ));
        revoke_key(&conn, &id).unwrap();
        ring.reload(&conn).unwrap();
        assert!(matches!(
            ring.authorize(Some(&bearer), "digits"),
            Err(Denied::Revoked(_))
        ));
        // Only the hash is stored: the secret appears nowhere in the database.
        let secret = key.rsplit('_').next().unwrap();
        let raw = std::fs::read(dir.path().join("db")).unwrap_or_default();
        let wal = std::fs::read(dir.path().join("db-wal")).unwrap_or_default();
        for bytes in [raw, wal] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }

    #[test]
    fn rate_quota_counts_per_minute() {
        let (dir, conn) = db();
        let limits = TenantLimits {
            requests_per_minute: Some(2),
            monthly_cap: None,
        };
        create_tenant(&conn, "t", &limits).unwrap();
        let ring = KeyRing::open(&dir.path().join("db")).unwrap();
        // Two calls may straddle a minute boundary; three in a row cannot all pass
        // unless one does, so allow for that.
        let results: Vec<_> = (0..3).map(|_| ring.admit("t")).collect();
        let denied = results.iter().filter(|r| r.is_err()).count();
        assert!(denied <= 1);
        let more: Vec<_> = (0..3).map(|_| ring.admit("t")).collect();
        assert!(
            more.iter()
                .any(|r| matches!(r, Err(Denied::RateLimited { .. })))
        );
    }
}
