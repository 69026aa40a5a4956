//! Lease locks on the database: acquire, renew, release, with expiry by the database clock and
//! fences from a sequence that only grows.

use std::time::Instant;

use sqlx::Row;

use crate::ids::Fence;
use crate::lock::{self, Lease, LockError, LockKey, LockKind, OwnerToken};

use super::backend::{Tx, lite, pg, sqlite_fns, with_pool};
use super::memory::{self, LockRow};
use super::stats::LockGrant;
use super::{Pool, Store, StoreError, StoreStats, TenantTx};

/// Lease locks of one store. Obtained from [`Store::locks`].
pub struct Locks<'s> {
    store: &'s Store,
}

impl<'s> Locks<'s> {
    pub(crate) fn new(store: &'s Store) -> Self {
        Locks { store }
    }

    /// Takes the lock for `owner` for `ttl_ms`, if it is free or its lease expired. `None` when
    /// another lease is live (counted as contention). Each grant carries a new, larger fence.
    /// Taking over an expired lease is counted as a TTL expiry: a released lease leaves no row,
    /// so a row still there when the grant overwrites it was one its holder let run out.
    pub async fn acquire(
        &self,
        kind: LockKind,
        key: &LockKey,
        owner: OwnerToken,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let ttl_ms = lock::check_ttl_ms(ttl_ms)?;
        let started = Instant::now();
        let granted = match self.store.pool() {
            Pool::Pg(pool) => {
                let mut conn = pool.acquire().await?;
                acquire_pg(&mut conn, kind, key, owner, ttl_ms, true).await?
            }
            Pool::Lite(pool) => {
                // `BEGIN IMMEDIATE` holds the write lock from the start: the row the acquisition
                // reads is the row its upsert finds.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let granted = acquire_lite(&mut tx, kind, key, owner, ttl_ms, true).await?;
                tx.commit().await?;
                granted
            }
            Pool::InThread(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let granted = acquire_in_thread(&mut tx, kind, key, owner, ttl_ms, true).await?;
                tx.commit().await?;
                granted
            }
            Pool::Memory(pool) => {
                let mut tx = pool.begin().await?;
                let granted = acquire_memory(&mut tx, kind, key, owner, ttl_ms, true)?;
                tx.commit();
                granted
            }
        };
        Ok(record_grant(
            self.store.stats(),
            (kind, key, owner),
            granted,
            started,
        ))
    }

    /// How many live (unexpired) leases of `kind` have a key starting with `prefix`.
    pub async fn live(&self, kind: LockKind, prefix: &str) -> Result<usize, StoreError> {
        let sql = |now: &str| {
            format!(
                "SELECT count(*) FROM {} WHERE substr(lock_key, 1, length($1)) = $1 \
                 AND expires_at_ms > {now}",
                kind.table()
            )
        };
        let count: i64 = with_pool!(self.store.pool(), pool, b => {
            sqlx::query_scalar(&sql(b::NOW_MS)).bind(prefix).fetch_one(pool).await?
        }, memory pool => {
            let tx = pool.begin().await?;
            i64::try_from(tx.live_locks(kind, prefix, memory::now_ms())).unwrap_or(i64::MAX)
        });
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// Deletes the expired leases of `kind` whose key starts with `prefix`; how many. For rows
    /// nobody takes over (an instance's presence, keyed by its owner token, is never acquired
    /// again once the instance is gone): an expired lease grants nothing, and fences come from a
    /// sequence, so removing one changes no later grant.
    pub async fn remove_expired(&self, kind: LockKind, prefix: &str) -> Result<u64, StoreError> {
        let sql = |now: &str| {
            format!(
                "DELETE FROM {} WHERE substr(lock_key, 1, length($1)) = $1 \
                 AND expires_at_ms <= {now}",
                kind.table()
            )
        };
        let removed = with_pool!(self.store.pool(), pool, b => {
            sqlx::query(&sql(b::NOW_MS)).bind(prefix).execute(pool).await?.rows_affected()
        }, memory pool => {
            let mut tx = pool.begin().await?;
            let expired = tx.expired_locks(kind, prefix, memory::now_ms());
            for key in &expired {
                tx.set_lock(kind, key, None)?;
            }
            tx.commit();
            u64::try_from(expired.len()).unwrap_or(u64::MAX)
        });
        Ok(removed)
    }

    /// Extends a live lease to `ttl_ms` from now. [`LockError::Lost`] when it expired or was
    /// taken over: the holder must stop writing under it.
    pub async fn renew(&self, lease: &Lease, ttl_ms: i64) -> Result<Lease, StoreError> {
        let ttl_ms = lock::check_ttl_ms(ttl_ms)?;
        let table = lease.kind.table();
        let sql = |now: &str| {
            format!(
                "UPDATE {table} SET expires_at_ms = {now} + $4 WHERE lock_key = $1 \
                 AND owner_token = $2 AND fence = $3 AND expires_at_ms > {now} RETURNING expires_at_ms"
            )
        };
        let (key, owner, fence) = (lease.key.as_str(), lease.owner.as_uuid(), lease.fence.0);
        let row = with_pool!(self.store.pool(), pool, b => {
            sqlx::query(&sql(b::NOW_MS))
                .bind(key).bind(owner).bind(fence).bind(ttl_ms)
                .fetch_optional(pool).await?
                .map(|r| r.try_get(0))
                .transpose()?
        }, memory pool => {
            let mut tx = pool.begin().await?;
            let now = memory::now_ms();
            let renewed = match tx.lock(lease.kind, key) {
                Some(row) if row.owner == owner && row.fence == fence && row.expires_at_ms > now => {
                    let expires_at_ms = now + ttl_ms;
                    tx.set_lock(lease.kind, key, Some(LockRow { expires_at_ms, ..row }))?;
                    Some(expires_at_ms)
                }
                _ => None,
            };
            tx.commit();
            renewed
        });
        match row {
            Some(expires_at_ms) => Ok(Lease {
                expires_at_ms,
                ..lease.clone()
            }),
            None => {
                self.store.stats().lock_lost(lease.kind);
                Err(LockError::Lost {
                    key: lease.key.clone(),
                    fence: lease.fence,
                }
                .into())
            }
        }
    }

    /// Gives the lease up. False when it was no longer held (expired and possibly taken over);
    /// a later acquisition still gets a larger fence, since fences come from a sequence.
    pub async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        let sql = || {
            format!(
                "DELETE FROM {} WHERE lock_key = $1 AND owner_token = $2 AND fence = $3",
                lease.kind.table()
            )
        };
        let (key, owner, fence) = (lease.key.as_str(), lease.owner.as_uuid(), lease.fence.0);
        let affected = with_pool!(self.store.pool(), pool, b => {
            sqlx::query(&sql()).bind(key).bind(owner).bind(fence)
                .execute(pool).await?.rows_affected()
        }, memory pool => {
            let mut tx = pool.begin().await?;
            let held = tx.lock(lease.kind, key);
            let affected = match held {
                Some(row) if row.owner == owner && row.fence == fence => {
                    tx.set_lock(lease.kind, key, None)?;
                    1
                }
                _ => 0,
            };
            tx.commit();
            affected
        });
        Ok(affected == 1)
    }
}

/// What a granted acquisition returned.
struct Granted {
    fence: i64,
    expires_at_ms: i64,
    /// The row overwritten was an expired lease of some holder (possibly this owner).
    took_over: bool,
}

/// Counts one acquisition attempt with its latency (`keel_lock_*`) and turns a grant into the
/// lease it is.
fn record_grant(
    stats: &StoreStats,
    (kind, key, owner): (LockKind, &LockKey, OwnerToken),
    granted: Option<Granted>,
    started: Instant,
) -> Option<Lease> {
    let grant = match granted {
        None => LockGrant::Refused,
        Some(Granted {
            took_over: true, ..
        }) => LockGrant::TookOverExpired,
        Some(Granted {
            took_over: false, ..
        }) => LockGrant::Free,
    };
    stats.lock_attempt(kind, grant, started.elapsed());
    if grant == LockGrant::TookOverExpired {
        tracing::warn!(lock = %key, ?kind, "lease taken over after its holder let the TTL expire");
    }
    granted.map(
        |Granted {
             fence,
             expires_at_ms,
             ..
         }| Lease {
            kind,
            key: key.clone(),
            owner,
            fence: Fence(fence),
            expires_at_ms,
        },
    )
}

impl TenantTx {
    /// [`Locks::acquire`] inside this transaction: the lease exists, with its new fence, only
    /// if the transaction commits, so whatever the transaction writes under the lease commits
    /// with it in one commit, and a transaction dropped after the grant (a refused write) leaves
    /// the lock as it found it without a release. On PostgreSQL the lock's row stays locked
    /// until the transaction ends: a competing acquisition waits for it, then finds the lease
    /// live (or the lock as it was, after a rollback).
    pub async fn acquire_lock(
        &mut self,
        kind: LockKind,
        key: &LockKey,
        owner: OwnerToken,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        self.acquire_lock_with(kind, key, owner, ttl_ms, true).await
    }

    /// [`TenantTx::acquire_lock`] that takes the lock even from a live holder: the entry lock
    /// planted away by the simulation (see [`crate::plant`]). Nothing else calls it.
    pub(crate) async fn acquire_lock_ignoring_holder(
        &mut self,
        kind: LockKind,
        key: &LockKey,
        owner: OwnerToken,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        self.acquire_lock_with(kind, key, owner, ttl_ms, false)
            .await
    }

    async fn acquire_lock_with(
        &mut self,
        kind: LockKind,
        key: &LockKey,
        owner: OwnerToken,
        ttl_ms: i64,
        exclusive: bool,
    ) -> Result<Option<Lease>, StoreError> {
        let ttl_ms = lock::check_ttl_ms(ttl_ms)?;
        let started = Instant::now();
        let granted = match &mut self.tx {
            Tx::Pg(tx) => acquire_pg(tx, kind, key, owner, ttl_ms, exclusive).await?,
            // The transaction began with `BEGIN IMMEDIATE`: it already holds the write lock.
            Tx::Lite(tx) => acquire_lite(tx, kind, key, owner, ttl_ms, exclusive).await?,
            Tx::InThread(tx) => acquire_in_thread(tx, kind, key, owner, ttl_ms, exclusive).await?,
            Tx::Memory(tx) => acquire_memory(tx, kind, key, owner, ttl_ms, exclusive)?,
        };
        Ok(record_grant(
            &self.stats,
            (kind, key, owner),
            granted,
            started,
        ))
    }
}

/// The upsert that grants a lease when the lock is free or expired; `RETURNING` adds
/// `took_over_expr` as its third column.
fn upsert_sql(
    kind: LockKind,
    fence_expr: &str,
    now: &str,
    took_over_expr: &str,
    exclusive: bool,
) -> String {
    let free = if exclusive {
        "l.expires_at_ms <= excluded.acquired_at_ms"
    } else {
        "true"
    };
    format!(
        "INSERT INTO {table} AS l (lock_key, owner_token, fence, expires_at_ms, acquired_at_ms) \
         SELECT $1, $2, {fence_expr}, t.now_ms + $3, t.now_ms FROM (SELECT {now} AS now_ms) AS t \
         WHERE true \
         ON CONFLICT (lock_key) DO UPDATE SET owner_token = excluded.owner_token, \
         fence = excluded.fence, expires_at_ms = excluded.expires_at_ms, \
         acquired_at_ms = excluded.acquired_at_ms \
         WHERE {free} \
         RETURNING fence, expires_at_ms, {took_over_expr}",
        table = kind.table()
    )
}

async fn acquire_pg(
    conn: &mut sqlx::PgConnection,
    kind: LockKind,
    key: &LockKey,
    owner: OwnerToken,
    ttl_ms: i64,
    exclusive: bool,
) -> Result<Option<Granted>, StoreError> {
    // Every part of one statement sees the same snapshot: `prev` is the row before the upsert.
    let sql = format!(
        "WITH prev AS (SELECT 1 FROM {table} WHERE lock_key = $1) {upsert}",
        table = kind.table(),
        upsert = upsert_sql(
            kind,
            "nextval('lock_fence_seq')",
            pg::NOW_MS,
            "EXISTS (SELECT 1 FROM prev)",
            exclusive,
        ),
    );
    let row = sqlx::query(&sql)
        .bind(key.as_str())
        .bind(owner.as_uuid())
        .bind(ttl_ms)
        .fetch_optional(conn)
        .await?;
    let granted = row.map(|r| -> Result<Granted, sqlx::Error> {
        Ok(Granted {
            fence: r.try_get(0)?,
            expires_at_ms: r.try_get(1)?,
            took_over: r.try_get(2)?,
        })
    });
    Ok(granted.transpose()?)
}

/// The acquisition on a memory store, as the SQLite statements make it: the fence sequence
/// grows on every attempt, and the row is written only when the lock is free or expired.
fn acquire_memory(
    tx: &mut memory::Transaction,
    kind: LockKind,
    key: &LockKey,
    owner: OwnerToken,
    ttl_ms: i64,
    exclusive: bool,
) -> Result<Option<Granted>, StoreError> {
    let now = memory::now_ms();
    let held = tx.lock(kind, key.as_str());
    let fence = tx.next_fence();
    if exclusive && held.is_some_and(|row| row.expires_at_ms > now) {
        return Ok(None);
    }
    let expires_at_ms = now + ttl_ms;
    let row = LockRow {
        owner: owner.as_uuid(),
        fence,
        expires_at_ms,
    };
    if kind == LockKind::Entry
        && held.is_some_and(|held| held.owner != row.owner && held.expires_at_ms > now)
    {
        tx.record_entry_lock_steal();
    }
    tx.set_lock(kind, key.as_str(), Some(row))?;
    Ok(Some(Granted {
        fence,
        expires_at_ms,
        took_over: held.is_some(),
    }))
}

sqlite_fns! {
/// Runs inside a transaction that began with `BEGIN IMMEDIATE`, so the row read here is the row
/// the upsert finds.
async fn acquire_lite / acquire_in_thread(
    conn,
    kind: LockKind,
    key: &LockKey,
    owner: OwnerToken,
    ttl_ms: i64,
    exclusive: bool,
) -> Result<Option<Granted>, StoreError> {
    let held_before: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT fence FROM {} WHERE lock_key = $1",
        kind.table()
    ))
    .bind(key.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let fence: i64 = sqlx::query_scalar(
        "UPDATE lock_fence_seq SET value = value + 1 WHERE id = 1 RETURNING value",
    )
    .fetch_one(&mut *conn)
    .await?;
    // The third column is unused here: the row read above already says whether one was held.
    let sql = upsert_sql(kind, "$4", lite::NOW_MS, "0", exclusive);
    let row = sqlx::query(&sql)
        .bind(key.as_str())
        .bind(owner.as_uuid())
        .bind(ttl_ms)
        .bind(fence)
        .fetch_optional(&mut *conn)
        .await?;
    let granted = row.map(|r| -> Result<Granted, sqlx::Error> {
        Ok(Granted {
            fence: r.try_get(0)?,
            expires_at_ms: r.try_get(1)?,
            took_over: held_before.is_some(),
        })
    });
    Ok(granted.transpose()?)
}
}
