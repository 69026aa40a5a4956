//! A profile's quarantine, stored (`profile_quarantines`, migration 0014): why, since when, the
//! evidence the reconciliation pass found, the request to end it, and — once a clean pass ended
//! it — when and on whose request. Closed rows stay as history.
//!
//! At most one quarantine of a profile is open: the `profile_quarantines_one_open` unique index
//! refuses a second open row, and the kernel never writes one — [`TenantTx::enter_quarantine`]
//! reads the open row (locked until commit) and renews it instead of inserting another.

use crate::ids::{ProfileId, UserId};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::backend::{RowExt, with_tx};
use super::tenant::TenantTx;

/// The longest quarantine reason stored (`profile_quarantines_reason_length`).
pub const QUARANTINE_REASON_LEN_MAX: usize = 1_000;
/// The largest evidence stored, as JSON (`profile_quarantines_evidence_length`).
pub const QUARANTINE_EVIDENCE_BYTES_MAX: usize = 16_384;
/// The most items of evidence kept per quarantine; the reason counts every mismatch.
pub const QUARANTINE_EVIDENCE_ITEMS_MAX: usize = 32;
/// The longest text of one side of an item of evidence.
pub const QUARANTINE_EVIDENCE_TEXT_LEN_MAX: usize = 200;
/// The most closed quarantines [`TenantTx::quarantine_history`] returns.
pub const QUARANTINE_HISTORY_MAX: usize = 100;

/// One order or position a reconciliation pass could not explain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEvidence {
    /// The mismatch kind (`missing_in_db`, `missing_on_exchange`, `status_mismatch`,
    /// `position_mismatch`).
    pub kind: String,
    /// The client order id of an order, or the symbol of a position.
    pub subject: String,
    /// What the store said.
    pub store: String,
    /// What the exchange said.
    pub exchange: String,
}

impl QuarantineEvidence {
    /// An item of evidence, each text cut to [`QUARANTINE_EVIDENCE_TEXT_LEN_MAX`] characters.
    pub fn new(kind: &str, subject: &str, store: &str, exchange: &str) -> QuarantineEvidence {
        let cut = |text: &str| {
            text.chars()
                .take(QUARANTINE_EVIDENCE_TEXT_LEN_MAX)
                .collect()
        };
        QuarantineEvidence {
            kind: cut(kind),
            subject: cut(subject),
            store: cut(store),
            exchange: cut(exchange),
        }
    }
}

/// A quarantine as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantineRecord {
    /// What the reconciliation pass that quarantined the profile found, by mismatch kind.
    pub reason: String,
    /// Kernel time of the pass that first found it, ms since the epoch.
    pub since_ms: i64,
    /// What the store and the exchange said of each thing the pass could not explain (at most
    /// [`QUARANTINE_EVIDENCE_ITEMS_MAX`]).
    pub evidence: Vec<QuarantineEvidence>,
    /// Who asked to end it (its owner by a resume, or an operator), while a request stands.
    pub clear_requested_by: Option<UserId>,
    /// When they asked (database clock, ms since the epoch).
    pub clear_requested_at_ms: Option<i64>,
    /// When a clean pass ended it (database clock), for a closed one.
    pub cleared_at_ms: Option<i64>,
    /// On whose request it ended, for a closed one.
    pub cleared_by: Option<UserId>,
}

const COLUMNS: &str = "reason, evidence, since_ms, clear_requested_by, clear_requested_at_ms, \
                       cleared_at_ms, cleared_by";

fn decode(row: &impl RowExt) -> Result<QuarantineRecord, StoreError> {
    let evidence = row.text("evidence")?;
    let evidence = serde_json::from_str(&evidence)
        .map_err(|e| StoreError::Corrupt(format!("quarantine evidence: {e}")))?;
    Ok(QuarantineRecord {
        reason: row.text("reason")?,
        since_ms: row.int("since_ms")?,
        evidence,
        clear_requested_by: row.opt_uuid("clear_requested_by")?.map(UserId::from_uuid),
        clear_requested_at_ms: row.opt_int("clear_requested_at_ms")?,
        cleared_at_ms: row.opt_int("cleared_at_ms")?,
        cleared_by: row.opt_uuid("cleared_by")?.map(UserId::from_uuid),
    })
}

/// The kernel's check of what a quarantine row may hold, before the database's.
fn check_quarantine(reason: &str, evidence: &str) -> Result<(), StoreError> {
    let reason_len = reason.chars().count();
    if reason_len == 0 || reason_len > QUARANTINE_REASON_LEN_MAX {
        return Err(StoreError::InvalidQuarantine(format!(
            "a reason of {reason_len} characters (1 to {QUARANTINE_REASON_LEN_MAX})"
        )));
    }
    if evidence.chars().count() > QUARANTINE_EVIDENCE_BYTES_MAX {
        return Err(StoreError::InvalidQuarantine(format!(
            "evidence of {} characters (at most {QUARANTINE_EVIDENCE_BYTES_MAX})",
            evidence.chars().count()
        )));
    }
    Ok(())
}

/// The evidence as stored: the first items that fit in [`QUARANTINE_EVIDENCE_BYTES_MAX`], at
/// most [`QUARANTINE_EVIDENCE_ITEMS_MAX`].
fn evidence_json(evidence: &[QuarantineEvidence]) -> String {
    let mut kept = evidence.len().min(QUARANTINE_EVIDENCE_ITEMS_MAX);
    loop {
        let json = serde_json::to_string(&evidence[..kept]).expect("evidence serializes");
        if json.chars().count() <= QUARANTINE_EVIDENCE_BYTES_MAX || kept == 0 {
            return json;
        }
        kept -= 1;
    }
}

impl TenantTx {
    /// The profile's open quarantine, if it is quarantined.
    pub async fn quarantine(
        &mut self,
        profile: ProfileId,
    ) -> Result<Option<QuarantineRecord>, StoreError> {
        self.open_quarantine(profile, false).await
    }

    /// The open quarantine, its row locked until commit when `lock` (before writing it).
    async fn open_quarantine(
        &mut self,
        profile: ProfileId,
        lock: bool,
    ) -> Result<Option<QuarantineRecord>, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "SELECT {COLUMNS} FROM profile_quarantines \
                 WHERE profile_id = $1 AND user_id = $2 AND cleared_at_ms IS NULL {}",
                if lock { b::FOR_UPDATE } else { "" }
            );
            let row = sqlx::query(&sql).bind(profile.as_uuid()).bind(user)
                .fetch_optional(&mut **c).await?;
            row.as_ref().map(decode).transpose()
        }, memory m => {
            Ok(m.open_quarantine(profile, UserId::from_uuid(user)).cloned())
        })
    }

    /// The profile's closed quarantines, newest first, at most [`QUARANTINE_HISTORY_MAX`].
    pub async fn quarantine_history(
        &mut self,
        profile: ProfileId,
    ) -> Result<Vec<QuarantineRecord>, StoreError> {
        let user = self.user_uuid();
        let limit = i64::try_from(QUARANTINE_HISTORY_MAX).expect("a small bound");
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "SELECT {COLUMNS} FROM profile_quarantines \
                 WHERE profile_id = $1 AND user_id = $2 AND cleared_at_ms IS NOT NULL \
                 ORDER BY quarantine_id DESC LIMIT $3"
            );
            let rows = sqlx::query(&sql).bind(profile.as_uuid()).bind(user).bind(limit)
                .fetch_all(&mut **c).await?;
            rows.iter().map(decode).collect()
        }, memory m => {
            Ok(m.quarantine_history(profile, UserId::from_uuid(user), QUARANTINE_HISTORY_MAX))
        })
    }

    /// Stores that the profile is quarantined, found at `now_ms` (kernel time): a new open row,
    /// or the open one renewed with this pass's reason and evidence (its `since_ms` kept). A
    /// request to end it is forgotten: drift found after the request needs a new one once it is
    /// explained. Returns the open quarantine as stored.
    pub async fn enter_quarantine(
        &mut self,
        profile: ProfileId,
        reason: &str,
        evidence: &[QuarantineEvidence],
        now_ms: i64,
    ) -> Result<QuarantineRecord, StoreError> {
        let evidence = evidence_json(evidence);
        check_quarantine(reason, &evidence)?;
        let user = self.user_uuid();
        let open = self.open_quarantine(profile, true).await?;
        with_tx!(&mut self.tx, c, b => {
            let done = if open.is_some() {
                sqlx::query(
                    "UPDATE profile_quarantines SET reason = $3, evidence = $4, \
                     clear_requested_by = NULL, clear_requested_at_ms = NULL \
                     WHERE profile_id = $1 AND user_id = $2 AND cleared_at_ms IS NULL",
                )
                .bind(profile.as_uuid()).bind(user).bind(reason).bind(evidence.as_str())
                .execute(&mut **c).await?
            } else {
                sqlx::query(
                    "INSERT INTO profile_quarantines \
                     (profile_id, user_id, reason, evidence, since_ms) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(profile.as_uuid()).bind(user).bind(reason).bind(evidence.as_str())
                .bind(now_ms)
                .execute(&mut **c).await?
            };
            assert_eq!(done.rows_affected(), 1, "one open quarantine written");
        }, memory m => {
            m.enter_quarantine(profile, UserId::from_uuid(user), reason, &evidence, now_ms)?;
        });
        let stored = self.quarantine(profile).await?;
        stored.ok_or(StoreError::UnknownProfile(profile))
    }

    /// Records `by`'s request to end the profile's quarantine (the next clean reconciliation
    /// pass of the instance running it ends it). Returns the open quarantine with the request,
    /// or `None` when the profile is not quarantined.
    pub async fn request_quarantine_clear(
        &mut self,
        profile: ProfileId,
        by: UserId,
    ) -> Result<Option<QuarantineRecord>, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "UPDATE profile_quarantines SET clear_requested_by = $3, clear_requested_at_ms = {} \
                 WHERE profile_id = $1 AND user_id = $2 AND cleared_at_ms IS NULL",
                b::NOW_MS
            );
            sqlx::query(&sql).bind(profile.as_uuid()).bind(user).bind(by.as_uuid())
                .execute(&mut **c).await?;
        }, memory m => {
            m.request_quarantine_clear(profile, UserId::from_uuid(user), by);
        });
        self.quarantine(profile).await
    }

    /// Ends the profile's open quarantine on the request that stands (a clean pass found the
    /// store and the exchange in agreement): the row is kept, closed, naming who asked. Returns
    /// the closed quarantine, or `None` when no quarantine with a request was open.
    pub async fn clear_quarantine(
        &mut self,
        profile: ProfileId,
    ) -> Result<Option<QuarantineRecord>, StoreError> {
        let user = self.user_uuid();
        let open = self.open_quarantine(profile, true).await?;
        if open.as_ref().is_none_or(|q| q.clear_requested_by.is_none()) {
            return Ok(None);
        }
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "UPDATE profile_quarantines SET cleared_at_ms = {}, cleared_by = clear_requested_by \
                 WHERE profile_id = $1 AND user_id = $2 AND cleared_at_ms IS NULL",
                b::NOW_MS
            );
            sqlx::query(&sql).bind(profile.as_uuid()).bind(user)
                .execute(&mut **c).await?;
        }, memory m => {
            m.clear_quarantine(profile, UserId::from_uuid(user));
        });
        let closed = self.quarantine_history(profile).await?.into_iter().next();
        assert!(
            self.quarantine(profile).await?.is_none(),
            "a cleared quarantine is closed"
        );
        Ok(closed)
    }
}

/// A quarantine row of the memory store.
#[derive(Debug, Clone)]
pub(crate) struct MemoryQuarantine {
    pub profile: ProfileId,
    pub user: UserId,
    pub record: QuarantineRecord,
}

impl MemoryQuarantine {
    pub(crate) fn is_open(&self) -> bool {
        self.record.cleared_at_ms.is_none()
    }
}

/// Decodes stored evidence (the memory store keeps it as the JSON the databases hold).
pub(crate) fn decode_evidence(json: &str) -> Result<Vec<QuarantineEvidence>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("quarantine evidence: {e}")))
}
