//! Reconciliation: the database converges to the exchange.
//!
//! Under the profile's reconciliation lock, a pass compares full sets — open orders, positions —
//! between the store and the exchange, and routes every discrepancy through the same handlers
//! live events use. A drift it cannot repair (an order or position the store cannot explain)
//! puts the profile, and only it, into reduce-only quarantine.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rust_decimal::Decimal;
use serde::Serialize;

use crate::exchange::{OrderReport, OrderRequest, OrderType};
use crate::ids::{ClientOrderId, IntentKind};
use crate::ledger::Capital;
use crate::lifecycle::{OrderRecord, Position};
use crate::lock::{LockKey, LockKind};
use crate::market::Side;
use crate::order::OrderStatus;
use crate::store::{QUARANTINE_EVIDENCE_ITEMS_MAX, QuarantineEvidence, StoreError};

use super::{EngineError, ProfileEngine};

/// TTL of the reconciliation lock: a pass that takes longer than this loses it.
pub const RECONCILIATION_LOCK_TTL_MS: i64 = 60_000;

/// What one pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReconcileReport {
    /// Discrepancies by kind (see `metrics::MISMATCH_KINDS`).
    pub mismatches: BTreeMap<&'static str, u32>,
    /// Discrepancies repaired through the handlers.
    pub repaired: u32,
    /// Set when the pass put the profile into quarantine.
    pub quarantined: bool,
    /// What the store and the exchange said of each thing the pass could not explain (the
    /// first [`QUARANTINE_EVIDENCE_ITEMS_MAX`]).
    pub evidence: Vec<QuarantineEvidence>,
    /// Set when the pass ended the profile's quarantine (a clean pass after a request).
    pub quarantine_cleared: bool,
    /// Set when another owner held the reconciliation lock: nothing was compared.
    pub skipped_locked: bool,
}

impl ReconcileReport {
    fn found(&mut self, kind: &'static str) {
        *self.mismatches.entry(kind).or_default() += 1;
    }

    /// A drift the pass cannot repair: the profile is quarantined, with what each side said.
    fn unexplained(&mut self, kind: &'static str, subject: &str, store: &str, exchange: &str) {
        self.found(kind);
        self.quarantined = true;
        if self.evidence.len() < QUARANTINE_EVIDENCE_ITEMS_MAX {
            self.evidence
                .push(QuarantineEvidence::new(kind, subject, store, exchange));
        }
    }

    /// True when the pass found nothing to repair.
    pub fn is_clean(&self) -> bool {
        !self.skipped_locked && self.mismatches.is_empty()
    }

    /// The result label for `keel_reconciliation_runs_total`.
    pub fn result_label(&self) -> &'static str {
        if self.quarantined {
            "quarantined"
        } else if self.mismatches.is_empty() {
            "clean"
        } else {
            "repaired"
        }
    }
}

impl ProfileEngine {
    /// One reconciliation pass under the profile's reconciliation lock, as a step of its own.
    #[tracing::instrument(name = "profile_step", skip_all, fields(profile_id = %self.spec.profile, user_id = %self.spec.user))]
    pub async fn reconcile(&mut self) -> Result<ReconcileReport, EngineError> {
        self.reconcile_pass().await
    }

    /// One reconciliation pass, inside whichever step runs it (a pass of its own, or recovery).
    pub(super) async fn reconcile_pass(&mut self) -> Result<ReconcileReport, EngineError> {
        let key = LockKey::reconciliation(self.spec.profile);
        let lease = self
            .store
            .locks()
            .acquire(
                LockKind::Reconciliation,
                &key,
                self.owner,
                RECONCILIATION_LOCK_TTL_MS,
            )
            .await?;
        // The store counted the contention, if any (`keel_lock_contention_total`).
        let Some(lease) = lease else {
            return Ok(ReconcileReport {
                skipped_locked: true,
                ..ReconcileReport::default()
            });
        };
        let result = self.reconcile_locked().await;
        if let Err(error) = self.store.locks().release(&lease).await {
            tracing::warn!(%error, "releasing reconciliation lock");
        }
        let label = match &result {
            Ok(report) => report.result_label(),
            Err(_) => "error",
        };
        self.metrics
            .reconciliation_runs_total
            .with_label_values(&[label])
            .inc();
        if let Ok(report) = &result {
            for (kind, count) in &report.mismatches {
                self.metrics
                    .reconciliation_mismatches_total
                    .with_label_values(&[kind])
                    .inc_by(u64::from(*count));
            }
            if report.mismatches.is_empty() {
                tracing::debug!(result = label, "reconciliation pass");
            } else {
                tracing::info!(result = label, mismatches = ?report.mismatches, "reconciliation pass");
            }
        }
        result
    }

    async fn reconcile_locked(&mut self) -> Result<ReconcileReport, EngineError> {
        // Orders waiting to be sent again go first: the comparison then sees where they stand.
        self.retry_unplaced().await?;
        if self.controls.quarantined {
            self.load_quarantine().await?;
        }
        let mut report = ReconcileReport::default();
        // What the store holds, read once in one transaction: compared with the exchange, and,
        // when the pass repairs nothing, the book as it is (no second listing).
        let mut tx = self.store.tenant(self.spec.user).begin().await?;
        let capital = tx.capital(self.spec.profile).await?;
        let stored_positions = tx.positions(self.spec.profile).await?;
        let stored_open = tx.open_orders(self.spec.profile).await?;
        tx.commit().await?;
        let exchange_open: HashMap<ClientOrderId, OrderReport> = self
            .exchange
            .open_orders(None)
            .await?
            .into_iter()
            .map(|r| (r.client_order_id.clone(), r))
            .collect();
        for order in &stored_open {
            match exchange_open.get(&order.client_order_id) {
                Some(live) => {
                    if live.executed_qty != order.filled_qty.get() {
                        report.found("qty_mismatch");
                        self.apply_report(live).await?;
                        report.repaired += 1;
                    } else if live.status != order.status && order.status.apply(live.status).is_ok()
                    {
                        report.found("status_mismatch");
                        self.apply_report(live).await?;
                        report.repaired += 1;
                    }
                }
                None => self.reconcile_closed(order, &mut report).await?,
            }
        }
        // A set, not a scan of the stored list per exchange order: a profile with 10,000 open
        // orders would otherwise compare 10⁸ ids per pass.
        let stored_ids: BTreeSet<&ClientOrderId> =
            stored_open.iter().map(|o| &o.client_order_id).collect();
        for (id, live) in &exchange_open {
            if stored_ids.contains(id) {
                continue;
            }
            if !id.is_derived_for(self.spec.profile, &live.symbol) {
                // Another profile's on a shared account, or one placed by hand: not this
                // profile's to explain, and no reason to stop its trading.
                self.note_foreign_open_order(id);
                continue;
            }
            let on_exchange = format!(
                "open, {}, filled {} of {}",
                live.status, live.executed_qty, live.orig_qty
            );
            match self.store.tenant(self.spec.user).order(id).await? {
                // Terminal in the store, open on the exchange: the store cannot move back.
                Some(stored) => report.unexplained(
                    "status_mismatch",
                    id.as_str(),
                    &describe_order(&stored),
                    &on_exchange,
                ),
                // An order the store never wrote ahead: not Keel's, or a lost database.
                None => {
                    report.unexplained("missing_in_db", id.as_str(), "no such order", &on_exchange)
                }
            }
            tracing::warn!(client_order_id = %id, status = %live.status, "exchange order the store cannot explain");
        }
        let untouched = report.repaired == 0;
        let stored_positions = if untouched {
            stored_positions
        } else {
            // The repairs moved positions: compare what the store holds now.
            self.store
                .tenant(self.spec.user)
                .positions(self.spec.profile)
                .await?
        };
        self.reconcile_positions(&stored_positions, &mut report)
            .await?;
        if report.quarantined {
            self.enter_quarantine(&report).await?;
        } else if report.is_clean() && self.quarantine_clear_requested() {
            report.quarantine_cleared = self.end_quarantine().await?;
        }
        if untouched {
            self.reset_book(capital, stored_positions, stored_open);
        } else {
            self.reload_book().await?;
        }
        Ok(report)
    }

    /// A stored open order the exchange no longer lists as open.
    async fn reconcile_closed(
        &mut self,
        order: &OrderRecord,
        report: &mut ReconcileReport,
    ) -> Result<(), EngineError> {
        match self
            .exchange
            .order(&order.symbol, &order.client_order_id)
            .await?
        {
            Some(live) => {
                report.found(if live.executed_qty != order.filled_qty.get() {
                    "qty_mismatch"
                } else {
                    "status_mismatch"
                });
                self.apply_report(&live).await?;
                report.repaired += 1;
            }
            // Known not to be placed: it waits to be sent again, and nothing is missing.
            None if self.is_unplaced(&order.client_order_id) => {}
            None if matches!(
                order.status,
                OrderStatus::PendingSubmit | OrderStatus::Unknown
            ) =>
            {
                let now_ms = self.clock.now_ms();
                let since_ms = *self
                    .unknown_since_ms
                    .entry(order.client_order_id.clone())
                    .or_insert(now_ms);
                if now_ms - since_ms >= self.config.unknown_resolve_after_ms {
                    // Past the window in which a delayed request could still be accepted: the
                    // order never existed. An exit is sent again as it was decided (the position
                    // is still there to close); an entry's reservation and lock are released.
                    report.found("missing_on_exchange");
                    report.repaired += 1;
                    if order.kind == IntentKind::Exit {
                        let request = self
                            .unknown_requests
                            .get(&order.client_order_id)
                            .cloned()
                            .unwrap_or_else(|| exit_request_of(order));
                        self.unknown_since_ms.remove(&order.client_order_id);
                        tracing::warn!(profile_id = %self.spec.profile, client_order_id = %order.client_order_id, "exit never placed: sent again");
                        return self.submit(order, &request).await;
                    }
                    self.release_never_placed(&order.client_order_id).await?;
                }
            }
            None => {
                // The store saw the exchange accept it, and the exchange has forgotten it.
                report.unexplained(
                    "missing_on_exchange",
                    order.client_order_id.as_str(),
                    &describe_order(order),
                    "no such order",
                );
            }
        }
        Ok(())
    }

    async fn release_never_placed(&mut self, id: &ClientOrderId) -> Result<(), EngineError> {
        let outcome = self
            .store
            .tenant(self.spec.user)
            .release_order(id, OrderStatus::Rejected)
            .await?;
        self.unknown_since_ms.remove(id);
        self.unknown_requests.remove(id);
        if let crate::lifecycle::StatusOutcome::Changed(order) = &outcome {
            self.count_status_entered(order.status);
        }
        if let Some(lease) = self.entry_leases.remove(id) {
            self.release_lease(&lease).await;
        }
        Ok(())
    }

    /// Compares the positions the store holds (`stored`) with the exchange's.
    async fn reconcile_positions(
        &mut self,
        stored: &[Position],
        report: &mut ReconcileReport,
    ) -> Result<(), EngineError> {
        let mut expected: BTreeMap<String, Decimal> = BTreeMap::new();
        for position in stored {
            let signed = match position.side {
                Side::Buy => position.qty_open.get(),
                Side::Sell => -position.qty_open.get(),
            };
            expected.insert(position.symbol.to_string(), signed);
        }
        let mut actual: BTreeMap<String, Decimal> = BTreeMap::new();
        for position in self.exchange.positions().await? {
            if !position.qty.is_zero() {
                actual.insert(position.symbol.to_string(), position.qty);
            }
        }
        let symbols: BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
        for symbol in symbols {
            let want = expected.get(symbol).copied().unwrap_or_default();
            let have = actual.get(symbol).copied().unwrap_or_default();
            if want != have {
                tracing::warn!(%symbol, stored = %want, exchange = %have, "position differs from the exchange");
                report.unexplained(
                    "position_mismatch",
                    symbol,
                    &format!("position {want}"),
                    &format!("position {have}"),
                );
            }
        }
        Ok(())
    }

    /// Stores the quarantine this pass found (a new one, or the open one renewed with this
    /// pass's evidence) and puts the profile in reduce-only. A request to end it that stood is
    /// forgotten: the drift found after it needs a new request once it is explained.
    async fn enter_quarantine(&mut self, report: &ReconcileReport) -> Result<(), EngineError> {
        let found: Vec<String> = report
            .mismatches
            .iter()
            .map(|(kind, count)| format!("{kind} x{count}"))
            .collect();
        let reason = format!(
            "reconciliation found what it could not repair: {}",
            found.join(", ")
        );
        // Read at the start of this pass: the same drift with no request standing is stored.
        let unchanged = self.quarantine.as_ref().is_some_and(|q| {
            q.reason == reason && q.evidence == report.evidence && q.clear_requested_by.is_none()
        });
        if unchanged {
            return Ok(());
        }
        let action = if self.quarantine.is_some() {
            "renewed"
        } else {
            "entered"
        };
        let now_ms = self.clock.now_ms();
        let written = self
            .store
            .tenant(self.spec.user)
            .enter_quarantine(self.spec.profile, &reason, &report.evidence, now_ms)
            .await;
        self.count_quarantine_write(action, &written);
        // Reduce-only whether or not the row could be written: the drift is there either way,
        // and the next pass writes it again.
        if !self.controls.quarantined {
            self.controls.quarantined = true;
            tracing::error!(%reason, "profile quarantined: reduce-only until its owner or an operator asks to clear it and a reconciliation pass is clean");
        }
        let stored = written?;
        assert!(
            stored.cleared_at_ms.is_none() && stored.clear_requested_by.is_none(),
            "a quarantine just entered is open, with no request standing"
        );
        self.quarantine = Some(stored);
        Ok(())
    }

    /// Ends the quarantine on the request that stands: the stored row is closed (kept as
    /// history) and entries may start again. False when the store held no request any more.
    async fn end_quarantine(&mut self) -> Result<bool, EngineError> {
        let closed = self
            .store
            .tenant(self.spec.user)
            .clear_quarantine(self.spec.profile)
            .await;
        self.count_quarantine_write("cleared", &closed);
        let Some(closed) = closed? else {
            return Ok(false);
        };
        self.quarantine = None;
        self.controls.quarantined = false;
        tracing::info!(cleared_by = ?closed.cleared_by, "quarantine cleared: a clean pass after the request to clear it");
        Ok(true)
    }

    /// Reads the profile's stored quarantine: at recovery (a quarantine outlives the engine
    /// that found it) and before each pass while quarantined (a request to end it may have
    /// been recorded through any instance).
    pub(super) async fn load_quarantine(&mut self) -> Result<(), EngineError> {
        let stored = self
            .store
            .tenant(self.spec.user)
            .quarantine(self.spec.profile)
            .await?;
        if stored.is_some() && !self.controls.quarantined {
            tracing::warn!(reason = %stored.as_ref().map_or("", |q| q.reason.as_str()), "profile quarantined by an earlier pass: reduce-only until its owner or an operator asks to clear it and a reconciliation pass is clean");
        }
        self.controls.quarantined = stored.is_some();
        self.quarantine = stored;
        Ok(())
    }

    fn count_quarantine_write<T>(&self, action: &str, written: &Result<T, StoreError>) {
        let result = match written {
            Ok(_) => "committed",
            Err(StoreError::Constraint(_) | StoreError::InvalidQuarantine(_)) => "refused",
            Err(_) => "failed",
        };
        self.metrics
            .quarantine_writes_total
            .with_label_values(&[action, result])
            .inc();
    }

    /// Reloads the book from the store.
    pub(super) async fn reload_book(&mut self) -> Result<(), EngineError> {
        let mut tx = self.store.tenant(self.spec.user).begin().await?;
        let capital = tx.capital(self.spec.profile).await?;
        let positions = tx.positions(self.spec.profile).await?;
        let orders = tx.open_orders(self.spec.profile).await?;
        tx.commit().await?;
        self.reset_book(capital, positions, orders);
        Ok(())
    }

    /// Replaces the book with what the store holds and publishes its open orders.
    fn reset_book(&mut self, capital: Capital, positions: Vec<Position>, orders: Vec<OrderRecord>) {
        self.book.reset(capital, positions, orders);
        self.capital_recorded = None;
        self.order_applied = None;
        self.orders_open.publish(&self.book);
    }
}

/// An order as the store holds it, for the evidence of a quarantine.
fn describe_order(order: &OrderRecord) -> String {
    format!(
        "{}, {:?} {:?}, filled {} of {}",
        order.status, order.kind, order.side, order.filled_qty, order.qty
    )
}

/// The request of a stored exit whose request was not kept (it was written before a restart):
/// a reduce-only market order for its quantity, since the store does not keep the order type and
/// an exit's purpose is to close the position.
fn exit_request_of(order: &OrderRecord) -> OrderRequest {
    OrderRequest {
        client_order_id: order.client_order_id.clone(),
        symbol: order.symbol.clone(),
        side: order.side,
        order_type: OrderType::Market,
        qty: order.qty,
        reduce_only: true,
    }
}
