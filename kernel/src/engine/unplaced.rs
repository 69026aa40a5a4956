//! Orders the exchange would not take yet.
//!
//! A rate limit (429, 418) or an answer that the exchange is unavailable and did not execute the
//! request leaves the order not placed, and the decision still stands. The order stays
//! PENDING_SUBMIT and is sent again, with the same client order id, once the wait the exchange
//! asked for (or a backoff) is over: an EXIT until the exchange takes it or refuses it for a
//! reason of the order's own, an ENTRY within [`EngineConfig::entry_retry_budget_ms`], after which
//! it is released as REJECTED. A dropped entry loses an opportunity; a dropped exit leaves a
//! position nobody closes. `keel_orders_awaiting_placement{kind}` counts the orders waiting and
//! `KeelExitAwaitingPlacement` alerts when an exit waits for long (runbooks/exchange-degraded.md).
//!
//! [`EngineConfig::entry_retry_budget_ms`]: super::EngineConfig::entry_retry_budget_ms

use crate::exchange::OrderRequest;
use crate::ids::{ClientOrderId, IntentKind};
use crate::lifecycle::OrderRecord;
use crate::order::OrderStatus;

use super::{EngineError, ProfileEngine};

/// The first wait when the exchange named none.
pub const PLACEMENT_BACKOFF_MIN_MS: u64 = 500;
/// The longest wait between two attempts at one order.
pub const PLACEMENT_BACKOFF_MAX_MS: u64 = 30_000;
/// Most waiting orders one step sends again; the rest wait for the next step.
pub const PLACEMENT_RETRIES_PER_STEP_MAX: usize = 16;

/// One order waiting to be sent again.
#[derive(Debug, Clone)]
pub(super) struct Unplaced {
    request: OrderRequest,
    kind: IntentKind,
    /// Attempts refused so far.
    attempts: u32,
    /// Kernel time of the first refusal.
    first_ms: i64,
    /// Kernel time from which it may be sent again.
    next_ms: i64,
}

/// The wait before attempt `attempts + 1`: what the exchange asked for, and at least a backoff
/// that doubles with each refusal up to [`PLACEMENT_BACKOFF_MAX_MS`].
pub(super) fn placement_wait_ms(attempts: u32, retry_after_ms: u64) -> u64 {
    let backoff = PLACEMENT_BACKOFF_MIN_MS
        .saturating_mul(1_u64 << attempts.min(16))
        .min(PLACEMENT_BACKOFF_MAX_MS);
    retry_after_ms.max(backoff)
}

fn kind_label(kind: IntentKind) -> &'static str {
    match kind {
        IntentKind::Entry => "entry",
        IntentKind::Exit => "exit",
    }
}

impl ProfileEngine {
    /// Keeps `order`, which the exchange did not execute, to be sent again after `retry_after_ms`
    /// (or the backoff); an entry past its retry budget is released instead.
    pub(super) async fn defer(
        &mut self,
        order: &OrderRecord,
        request: &OrderRequest,
        retry_after_ms: u64,
    ) -> Result<(), EngineError> {
        let now_ms = self.clock.now_ms();
        let id = &order.client_order_id;
        let (attempts, first_ms) = self
            .unplaced
            .get(id)
            .map_or((0, now_ms), |u| (u.attempts, u.first_ms));
        if order.kind == IntentKind::Entry && now_ms - first_ms >= self.entry_retry_budget_ms() {
            tracing::warn!(profile_id = %self.spec.profile, client_order_id = %id, attempts, "entry not placed within its retry budget: released");
            return self.release(id, OrderStatus::Rejected).await;
        }
        let wait_ms = placement_wait_ms(attempts, retry_after_ms);
        tracing::warn!(profile_id = %self.spec.profile, client_order_id = %id, attempt = attempts + 1, wait_ms, "order not taken by the exchange: it is sent again after the wait");
        let unplaced = Unplaced {
            request: request.clone(),
            kind: order.kind,
            attempts: attempts + 1,
            first_ms,
            next_ms: now_ms.saturating_add(i64::try_from(wait_ms).unwrap_or(i64::MAX)),
        };
        if self.unplaced.insert(id.clone(), unplaced).is_none() {
            self.metrics
                .orders_awaiting_placement
                .with_label_values(&[kind_label(order.kind)])
                .inc();
        }
        Ok(())
    }

    /// How long an entry is sent again: the configured budget, at most half of the entry lock's
    /// TTL, since a waiting entry holds its lock.
    fn entry_retry_budget_ms(&self) -> i64 {
        self.config
            .entry_retry_budget_ms
            .min(self.config.entry_lock_ttl_ms / 2)
    }

    /// Stops waiting for `id`: the exchange answered for it, or it left the book. A waiting
    /// order released by the engine is forgotten by the release itself, once stored: while the
    /// write fails it stays known as never placed, and the next step releases it again.
    pub(super) fn forget_unplaced(&mut self, id: &ClientOrderId) {
        if let Some(unplaced) = self.unplaced.remove(id) {
            self.metrics
                .orders_awaiting_placement
                .with_label_values(&[kind_label(unplaced.kind)])
                .dec();
        }
    }

    /// True while `id` waits to be sent again: the exchange has not seen it, and that is known.
    pub(super) fn is_unplaced(&self, id: &ClientOrderId) -> bool {
        self.unplaced.contains_key(id)
    }

    /// Sends again the waiting orders whose wait is over (at most
    /// [`PLACEMENT_RETRIES_PER_STEP_MAX`]); returns their ids. A waiting entry that may no longer
    /// be entered (kill switch, pause, quarantine) is released instead.
    pub async fn retry_unplaced(&mut self) -> Result<Vec<ClientOrderId>, EngineError> {
        if self.unplaced.is_empty() {
            return Ok(Vec::new());
        }
        // Boxed: the retries' future is large, and every candle's step, which holds this one,
        // is built and moved at the size of what it holds; most steps retry nothing.
        Box::pin(self.retry_due()).await
    }

    async fn retry_due(&mut self) -> Result<Vec<ClientOrderId>, EngineError> {
        let now_ms = self.clock.now_ms();
        let budget_ms = self.entry_retry_budget_ms();
        let expired: Vec<ClientOrderId> = self
            .unplaced
            .iter()
            .filter(|(_, u)| u.kind == IntentKind::Entry && now_ms - u.first_ms >= budget_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            tracing::warn!(profile_id = %self.spec.profile, client_order_id = %id, "entry not placed within its retry budget: released");
            self.release(&id, OrderStatus::Rejected).await?;
        }
        let due: Vec<ClientOrderId> = self
            .unplaced
            .iter()
            .filter(|(_, u)| u.next_ms <= now_ms)
            .map(|(id, _)| id.clone())
            .take(PLACEMENT_RETRIES_PER_STEP_MAX)
            .collect();
        let mut sent = Vec::with_capacity(due.len());
        for id in due {
            let Some(unplaced) = self.unplaced.get(&id).cloned() else {
                continue;
            };
            // Recovery or reconciliation may have settled it meanwhile.
            let order = match self.book.open_orders.get(&id) {
                Some(order)
                    if matches!(
                        order.status,
                        OrderStatus::PendingSubmit | OrderStatus::Unknown
                    ) =>
                {
                    order.clone()
                }
                _ => {
                    self.forget_unplaced(&id);
                    continue;
                }
            };
            if unplaced.kind == IntentKind::Entry && self.entry_block().is_some() {
                tracing::info!(profile_id = %self.spec.profile, client_order_id = %id, "waiting entry released: entries are blocked");
                self.release(&id, OrderStatus::Rejected).await?;
                continue;
            }
            self.metrics
                .order_placement_retries_total
                .with_label_values(&[kind_label(unplaced.kind)])
                .inc();
            self.submit(&order, &unplaced.request).await?;
            sent.push(id);
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_what_the_exchange_asked_and_at_least_a_doubling_backoff() {
        assert_eq!(placement_wait_ms(0, 0), PLACEMENT_BACKOFF_MIN_MS);
        assert_eq!(placement_wait_ms(1, 0), 2 * PLACEMENT_BACKOFF_MIN_MS);
        assert_eq!(placement_wait_ms(0, 5_000), 5_000);
        assert_eq!(placement_wait_ms(40, 0), PLACEMENT_BACKOFF_MAX_MS);
        assert_eq!(placement_wait_ms(40, 120_000), 120_000);
    }
}
