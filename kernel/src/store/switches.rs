//! The host-wide kill switch, one row shared by every instance on the database
//! (`host_switches`, migration 0007).

use super::backend::with_pool;
use super::{Operator, Store, StoreError};

/// The channel on which PostgreSQL announces a change of the host switches (migration 0007).
pub const HOST_CHANNEL: &str = "keel_host_switches";

/// The host switches as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSwitchesRow {
    /// The host-wide kill switch is engaged: no new entries on any instance.
    pub kill: bool,
    /// When an operator last changed it (database clock, ms since the Unix epoch).
    pub updated_at_ms: i64,
}

impl Store {
    /// The host switches an operator set (through any instance).
    pub async fn host_switches(&self) -> Result<HostSwitchesRow, StoreError> {
        let sql = "SELECT kill, updated_at_ms FROM host_switches WHERE id = 1";
        let (kill, updated_at_ms) = with_pool!(self.pool(), pool, b => {
            sqlx::query_as(sql).fetch_one(pool).await?
        }, memory => unsupported("host switches"));
        Ok(HostSwitchesRow {
            kill,
            updated_at_ms,
        })
    }
}

impl Operator<'_> {
    /// Engages or releases the host-wide kill switch for every instance on this database.
    pub async fn set_host_kill(&self, engaged: bool) -> Result<(), StoreError> {
        let sql = |now: &str| {
            format!(
                "UPDATE host_switches SET kill = $1, updated_at_ms = {now}, updated_by = $2 \
                 WHERE id = 1"
            )
        };
        let operator = self.operator.as_uuid();
        with_pool!(self.store.pool(), pool, b => {
            sqlx::query(&sql(b::NOW_MS)).bind(engaged).bind(operator).execute(pool).await?;
        }, memory => unsupported("set host kill"));
        Ok(())
    }
}
