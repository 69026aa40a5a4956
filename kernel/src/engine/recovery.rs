//! Restart recovery: before the first decision, the profile's state is rebuilt from the journal
//! and the exchange's truth.

use serde::Serialize;

use crate::ledger::RebuildReport;
use crate::order::OrderStatus;

use super::{EngineError, ProfileEngine, ReconcileReport, StepOutcome};

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecoveryReport {
    /// The capital rebuild from the journal.
    pub rebuild: RebuildReport,
    /// Orders that were PENDING_SUBMIT or UNKNOWN and were asked about.
    pub orders_resolved: usize,
    /// The reconciliation pass that closed recovery.
    pub reconciliation: ReconcileReport,
}

impl ProfileEngine {
    /// Rebuilds the capital row from the journal, asks the exchange about every order left in
    /// flight, and runs a reconciliation pass. Decisions may start once it returns.
    #[tracing::instrument(name = "profile_step", skip_all, fields(profile_id = %self.spec.profile, user_id = %self.spec.user))]
    pub async fn recover(&mut self) -> Result<RecoveryReport, EngineError> {
        #[cfg(feature = "lab")]
        crate::crash::point(crate::crash::RECOVERY);
        let rebuild = self
            .store
            .tenant(self.spec.user)
            .rebuild_capital(self.spec.profile, true)
            .await?;
        self.metrics.ledger_rebuilds_total.inc();
        if rebuild.differs() {
            self.metrics.ledger_rebuild_mismatches_total.inc();
            tracing::error!(stored = %rebuild.stored, journal = %rebuild.journal, "ledger rebuild: the capital row differed from its journal");
        }
        self.reload_book().await?;
        // A quarantine outlives the engine that found it: this one starts in it, and leaves it
        // only on a request and a clean pass, like the engine before it.
        self.load_quarantine().await?;
        let in_flight: Vec<_> = self.book.open_orders.values().cloned().collect();
        // The window after which an order the exchange does not know counts as never placed
        // starts now at the latest, whatever the queries below answer: an engine that starts
        // does not know when its predecessor sent them.
        let now_ms = self.clock.now_ms();
        for order in &in_flight {
            if matches!(
                order.status,
                OrderStatus::PendingSubmit | OrderStatus::Unknown
            ) {
                self.unknown_since_ms
                    .entry(order.client_order_id.clone())
                    .or_insert(now_ms);
            }
        }
        let mut orders_resolved = 0;
        for order in &in_flight {
            if matches!(
                order.status,
                OrderStatus::PendingSubmit | OrderStatus::Unknown
            ) {
                orders_resolved += 1;
            }
            // Every open order is asked about: fills may have happened while no one listened.
            self.resolve_by_query(order).await?;
        }
        let mut outcome = StepOutcome::default();
        self.drain_decisions(&mut outcome).await?;
        let reconciliation = self.reconcile_pass().await?;
        tracing::info!(orders_resolved, "recovery finished");
        Ok(RecoveryReport {
            rebuild,
            orders_resolved,
            reconciliation,
        })
    }
}
