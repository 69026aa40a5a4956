//! Claims of (exchange account, symbol) by running profiles (migration 0012): a USDⓈ-M account
//! in one-way mode holds one net position per symbol, so two profiles trading one symbol on one
//! account would each see the other's position as drift. The primary key allows one profile per
//! (account, symbol); a profile claims its symbols as it starts, and takes over a claim only
//! from a profile that no longer holds a live profile lease.

use rust_decimal::Decimal;

use crate::ids::{ProfileId, Symbol, UserId};
use crate::ledger::check_nonnegative;
use crate::lock::LockKey;

use super::backend::{RowExt, Tx, with_pool, with_tx};
use super::{DirectoryEntry, Store, StoreError};

/// The most profiles an account audit sums (claims are one per symbol of an account).
const ACCOUNT_CLAIMANTS_MAX: i64 = 1_000;

/// The host's own exchange account's name in claims.
pub const HOST_ACCOUNT: &str = "host";

/// The name in claims of the exchange account an API key opens: `key:` and the first 128 bits
/// of the key's SHA-256, so that claims name an account without holding its key.
pub fn owner_account(api_key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(api_key.as_bytes());
    format!("key:{}", hex::encode(&digest[..16]))
}

impl Store {
    /// Claims every one of `symbols` on `account` for `profile`, and gives up the profile's
    /// claims on any other account; `account` `None` (a paper account) gives up all of them.
    /// All or nothing: answers the first symbol another running profile holds, having claimed
    /// none.
    pub async fn claim_account(
        &self,
        profile: ProfileId,
        account: Option<&str>,
        symbols: &[Symbol],
    ) -> Result<Option<Symbol>, StoreError> {
        let mut tx = Tx::begin_host(self).await?;
        let lease_key = LockKey::profile(profile);
        let kept = account.unwrap_or("");
        with_tx!(&mut tx, c, b => {
            sqlx::query("DELETE FROM account_claims WHERE profile_id = $1 AND account <> $2")
                .bind(profile.as_uuid()).bind(kept)
                .execute(&mut **c).await?;
        }, memory => unsupported("account claims"));
        let Some(account) = account else {
            tx.commit().await?;
            return Ok(None);
        };
        for symbol in symbols {
            let claimed = with_tx!(&mut tx, c, b => {
                let sql = format!(
                    "INSERT INTO account_claims (account, symbol, profile_id, lease_key) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (account, symbol) DO UPDATE \
                     SET profile_id = excluded.profile_id, lease_key = excluded.lease_key, \
                         claimed_at_ms = {now} \
                     WHERE account_claims.profile_id = excluded.profile_id \
                        OR NOT EXISTS (SELECT 1 FROM profile_leases l \
                                       WHERE l.lock_key = account_claims.lease_key \
                                       AND l.expires_at_ms > {now}) \
                     RETURNING account",
                    now = b::NOW_MS
                );
                let row = sqlx::query(&sql)
                    .bind(account).bind(symbol.as_str()).bind(profile.as_uuid())
                    .bind(lease_key.as_str())
                    .fetch_optional(&mut **c).await?;
                row.is_some()
            }, memory => unsupported("account claims"));
            if !claimed {
                // Dropped, the transaction claims nothing.
                return Ok(Some(symbol.clone()));
            }
        }
        tx.commit().await?;
        Ok(None)
    }

    /// The accounts whose symbols `profile` claims.
    pub async fn profile_accounts(&self, profile: ProfileId) -> Result<Vec<String>, StoreError> {
        with_pool!(self.pool(), pool, b => {
            let rows = sqlx::query(
                "SELECT DISTINCT account FROM account_claims WHERE profile_id = $1 ORDER BY account",
            )
            .bind(profile.as_uuid())
            .fetch_all(pool).await?;
            rows.iter().map(|row| row.text("account")).collect()
        }, memory => unsupported("account claims"))
    }

    /// The capital of the profiles claiming `account` — allocated plus realized PnL (fees
    /// included), what the account's wallet balance holds for them — summed through each
    /// owner's scope (the directory names the owners).
    pub async fn account_capital(&self, account: &str) -> Result<Decimal, StoreError> {
        let claimants: Vec<DirectoryEntry> = with_pool!(self.pool(), pool, b => {
            let rows = sqlx::query(
                "SELECT DISTINCT c.profile_id, d.user_id FROM account_claims c \
                 JOIN profile_directory d ON d.profile_id = c.profile_id \
                 WHERE c.account = $1 LIMIT $2",
            )
            .bind(account).bind(ACCOUNT_CLAIMANTS_MAX)
            .fetch_all(pool).await?;
            rows.iter()
                .map(|row| Ok(DirectoryEntry {
                    profile: ProfileId::from_uuid(row.uuid("profile_id")?),
                    user: UserId::from_uuid(row.uuid("user_id")?),
                }))
                .collect::<Result<Vec<_>, StoreError>>()?
        }, memory => unsupported("account claims"));
        let mut total = Decimal::ZERO;
        for entry in claimants {
            match self.tenant(entry.user).capital(entry.profile).await {
                Ok(capital) => total += capital.equity(),
                // Deleted since it claimed: it holds nothing on the account any more.
                Err(StoreError::UnknownProfile(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(total)
    }

    /// Records the wallet balance `account` reports.
    pub async fn record_account_balance(
        &self,
        account: &str,
        balance: Decimal,
    ) -> Result<(), StoreError> {
        let balance = check_nonnegative("account balance", balance)?;
        with_pool!(self.pool(), pool, b => {
            let sql = format!(
                "INSERT INTO account_balances (account, balance) VALUES ($1, $2) \
                 ON CONFLICT (account) DO UPDATE SET balance = excluded.balance, \
                 reported_at_ms = {}",
                b::NOW_MS
            );
            sqlx::query(&sql).bind(account).bind(b::money(balance)).execute(pool).await?;
        }, memory => unsupported("account balances"));
        Ok(())
    }

    /// The wallet balance `account` last reported, if it ever did.
    pub async fn account_balance(&self, account: &str) -> Result<Option<Decimal>, StoreError> {
        with_pool!(self.pool(), pool, b => {
            let row = sqlx::query("SELECT balance FROM account_balances WHERE account = $1")
                .bind(account)
                .fetch_optional(pool).await?;
            row.map(|r| r.money("balance")).transpose()
        }, memory => unsupported("account balances"))
    }
}
