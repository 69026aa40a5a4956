//! The lifecycle handlers: the one place where what the exchange says becomes stored truth.
//!
//! The decision path, the monitor loop (live events), restart recovery and reconciliation all
//! route through [`ProfileEngine::apply_report`] and [`ProfileEngine::apply_fill`], so a fill
//! learned from a WebSocket event, a REST answer or a reconciliation pass is recorded the same way,
//! once (the store's UNIQUE keys make a replay a no-op).

#[cfg(feature = "lab")]
use crate::crash;
use crate::exchange::{Fill, OrderReport, OrderRequest, PlaceOutcome, UserEvent};
use crate::ids::{ClientOrderId, IntentKind};
use crate::ledger::Capital;
use crate::lifecycle::{FillOutcome, FillReport, OrderRecord, StatusOutcome, WriteAhead};
use crate::order::OrderStatus;
use crate::store::StoreError;
use crate::strategy::FillView;

use tracing::Instrument as _;

use super::book::position_side;
use super::{EngineError, PENDING_DECISIONS_PER_STEP_MAX, ProfileEngine, StepOutcome};

/// The `order` span of an operation on `id`, unless one is open already: a fill applied while an
/// entry is submitted logs under the entry's span, not under a second copy of it.
fn order_span(id: &ClientOrderId) -> tracing::Span {
    let current = tracing::Span::current();
    if current.metadata().is_some_and(|m| m.name() == "order") {
        tracing::Span::none()
    } else {
        tracing::info_span!("order", client_order_id = %id)
    }
}

impl ProfileEngine {
    /// Sends a written-ahead order and applies the answer.
    pub(super) async fn submit(
        &mut self,
        order: &OrderRecord,
        request: &OrderRequest,
    ) -> Result<(), EngineError> {
        let span = order_span(&order.client_order_id);
        async move {
            #[cfg(feature = "lab")]
            crash::point(crash::BEFORE_SUBMIT);
            let started = std::time::Instant::now();
            let outcome = self.exchange.place(request).await;
            #[cfg(feature = "lab")]
            crash::point(crash::AFTER_SUBMIT_BEFORE_ANSWER);
            let label = place_outcome_label(&outcome);
            if !matches!(
                outcome,
                PlaceOutcome::RateLimited { .. } | PlaceOutcome::Unavailable { .. }
            ) {
                self.forget_unplaced(&order.client_order_id);
            }
            self.metrics
                .exchange_requests_total
                .with_label_values(&["order", label])
                .inc();
            self.metrics
                .exchange_request_duration_seconds
                .with_label_values(&["order"])
                .observe(started.elapsed().as_secs_f64());
            match outcome {
                PlaceOutcome::Accepted(report) => self.apply_report(&report).await,
                PlaceOutcome::Filled { report, fills }
                | PlaceOutcome::PartiallyFilled { report, fills } => {
                    for fill in &fills {
                        self.apply_fill(fill).await?;
                    }
                    self.apply_report(&report).await
                }
                // The outcomes other than an order taken are boxed: rarer, and their ways are
                // long (inline, their futures would be part of every submission's).
                PlaceOutcome::Rejected { code, msg } => {
                    tracing::info!(code, %msg, "order rejected by the exchange");
                    Box::pin(self.release(&order.client_order_id, OrderStatus::Rejected)).await
                }
                // Not executed, and the decision stands: sent again after the wait.
                PlaceOutcome::RateLimited { retry_after_ms } => {
                    tracing::warn!(retry_after_ms, "order rate-limited");
                    Box::pin(self.defer(order, request, retry_after_ms)).await
                }
                PlaceOutcome::Unavailable { code, msg } => {
                    tracing::warn!(code, %msg, "exchange unavailable; the order was not executed");
                    Box::pin(self.defer(order, request, 0)).await
                }
                PlaceOutcome::Unknown { reason } => {
                    tracing::warn!(%reason, "order outcome unknown: querying");
                    // Kept so that an exit found never placed is sent again as it was decided.
                    self.unknown_requests
                        .insert(order.client_order_id.clone(), request.clone());
                    Box::pin(async {
                        self.mark_unknown(&order.client_order_id).await?;
                        let order = self
                            .book
                            .open_orders
                            .get(&order.client_order_id)
                            .cloned()
                            .unwrap_or_else(|| order.clone());
                        self.resolve_by_query(&order).await
                    })
                    .await
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Records that the exchange may or may not hold `id`. The window after which it counts as
    /// never placed starts now, before the status is written: the request went out now whether or
    /// not the write succeeds, and an order left PENDING_SUBMIT by a failed write must not start
    /// its window only at the first reconciliation pass that notices it.
    async fn mark_unknown(&mut self, id: &ClientOrderId) -> Result<(), EngineError> {
        self.unknown_since_ms
            .entry(id.clone())
            .or_insert_with(|| self.clock.now_ms());
        let outcome = self.store.tenant(self.spec.user).mark_unknown(id).await?;
        self.note_status(outcome).await
    }

    /// Asks the exchange about one order by client order id and applies the answer. An order the
    /// exchange does not know stays as it is until reconciliation's window says it never existed.
    pub(super) async fn resolve_by_query(
        &mut self,
        order: &OrderRecord,
    ) -> Result<(), EngineError> {
        let span = order_span(&order.client_order_id);
        async move {
            match self
                .exchange
                .order(&order.symbol, &order.client_order_id)
                .await
            {
                Ok(Some(report)) => self.apply_report(&report).await,
                Ok(None) => {
                    self.unknown_since_ms
                        .entry(order.client_order_id.clone())
                        .or_insert_with(|| self.clock.now_ms());
                    Ok(())
                }
                Err(error) => {
                    // Still unknown: reconciliation asks again.
                    tracing::warn!(%error, "order query failed");
                    Ok(())
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Applies what the exchange says about one order: missing fills first (fetched by client
    /// order id when the report shows more executed than recorded), then the status.
    pub async fn apply_report(&mut self, report: &OrderReport) -> Result<(), EngineError> {
        let span = order_span(&report.client_order_id);
        async move {
            let Some(stored) = self
                .store
                .tenant(self.spec.user)
                .order(&report.client_order_id)
                .await?
            else {
                // Not this profile's order (or not this tenant's): nothing to apply here.
                return Ok(());
            };
            let behind = report.executed_qty > stored.filled_qty.get();
            if behind {
                let fills = self
                    .exchange
                    .fills(&report.symbol, &report.client_order_id)
                    .await?;
                for fill in &fills {
                    self.apply_fill(fill).await?;
                }
            }
            let tenant = self.store.tenant(self.spec.user);
            let outcome = match report.status {
                OrderStatus::New => {
                    let mut exchange_id = itoa::Buffer::new();
                    let exchange_id = exchange_id.format(report.exchange_order_id.0);
                    Some(
                        tenant
                            .confirm_accepted(&report.client_order_id, exchange_id)
                            .await?,
                    )
                }
                OrderStatus::Canceled | OrderStatus::Rejected | OrderStatus::Expired => Some(
                    tenant
                        .release_order(&report.client_order_id, report.status)
                        .await?,
                ),
                // Fill statuses are reached by recording fills; the others are the kernel's own.
                OrderStatus::PartiallyFilled
                | OrderStatus::Filled
                | OrderStatus::PendingSubmit
                | OrderStatus::Unknown => None,
            };
            match outcome {
                Some(outcome) => self.note_status(outcome).await,
                // The fills fetched above moved the order on: read it again. Without them it is
                // as read above.
                None if behind => self.reload_order(&report.client_order_id).await,
                // The order as the engine last applied it (a fill's report after the fill): the
                // change that brought it here re-read position and capital; nothing is new.
                None if self.order_applied.as_ref() == Some(&stored) => Ok(()),
                None => self.after_order_change(stored).await,
            }
        }
        .instrument(span)
        .await
    }

    pub(super) async fn release(
        &mut self,
        id: &ClientOrderId,
        status: OrderStatus,
    ) -> Result<(), EngineError> {
        let outcome = self
            .store
            .tenant(self.spec.user)
            .release_order(id, status)
            .await?;
        self.note_status(outcome).await
    }

    async fn reload_order(&mut self, id: &ClientOrderId) -> Result<(), EngineError> {
        if let Some(order) = self.store.tenant(self.spec.user).order(id).await? {
            self.after_order_change(order).await?;
        }
        Ok(())
    }

    async fn note_status(&mut self, outcome: StatusOutcome) -> Result<(), EngineError> {
        if let StatusOutcome::Changed(order) = &outcome {
            self.count_status_entered(order.status);
        }
        self.after_order_change(outcome.order().clone()).await
    }

    /// Counts an order entering `status` (`keel_orders_total`): called once per transition,
    /// never for a replay or a repeated report.
    pub(super) fn count_status_entered(&self, status: OrderStatus) {
        // An order on its way (written ahead, then accepted) is routine; what it comes to, or an
        // answer that went missing, is worth an operator's eye.
        if matches!(status, OrderStatus::PendingSubmit | OrderStatus::New) {
            tracing::debug!(status = status.as_str(), "order status");
        } else {
            tracing::info!(status = status.as_str(), "order status");
        }
        self.metrics
            .orders_total
            .with_label_values(&[status.as_str()])
            .inc();
    }

    /// The order a write-ahead stored; a new one has entered PENDING_SUBMIT, a replay has not.
    pub(super) fn written_ahead(&self, written: WriteAhead) -> OrderRecord {
        if let WriteAhead::Written(order) = &written {
            self.count_status_entered(order.status);
        }
        written.order().clone()
    }

    /// Records the latest state of one order in the book and in `keel_orders_open`.
    pub(super) fn update_book_order(&mut self, order: OrderRecord) {
        self.book.update_order(order);
        self.orders_open.publish(&self.book);
    }

    /// Updates the book after an order changed, and lets go of its entry lock once the exchange
    /// has answered for it. An order now PENDING_SUBMIT, NEW or UNKNOWN got there by a write of
    /// its status alone (the write-ahead's reservation is re-read by the entry path itself), so
    /// capital and positions are as the book holds them; after a fill or a release both are
    /// re-read, in one transaction.
    async fn after_order_change(&mut self, order: OrderRecord) -> Result<(), EngineError> {
        let id = order.client_order_id.clone();
        let answered = !matches!(
            order.status,
            OrderStatus::PendingSubmit | OrderStatus::Unknown
        );
        if answered {
            self.unknown_since_ms.remove(&id);
            self.unknown_requests.remove(&id);
            self.forget_unplaced(&id);
            if let Some(lease) = self.entry_leases.remove(&id) {
                self.release_lease(&lease).await;
            }
        }
        let status_only = matches!(
            order.status,
            OrderStatus::PendingSubmit | OrderStatus::New | OrderStatus::Unknown
        );
        let symbol = order.symbol.clone();
        let exit_status = (order.kind == IntentKind::Exit).then_some(order.status);
        self.order_applied = None;
        if status_only {
            self.update_book_order(order);
            return Ok(());
        }
        self.update_book_order(order.clone());
        let mut tx = self.store.tenant(self.spec.user).begin().await?;
        let position = tx.position(self.spec.profile, &symbol).await?;
        let capital = tx.capital(self.spec.profile).await?;
        tx.commit().await?;
        self.book.update_position(&symbol, position);
        self.set_capital(capital);
        self.order_applied = Some(order);
        if let Some(status) = exit_status {
            self.follow_reversal(&symbol, status);
        }
        Ok(())
    }

    pub(super) async fn refresh_capital(&mut self) -> Result<(), EngineError> {
        let capital = self
            .store
            .tenant(self.spec.user)
            .capital(self.spec.profile)
            .await?;
        self.set_capital(capital);
        Ok(())
    }

    /// The capital row as last read, in the book and in `keel_capital_free_quote` (and its `_min`).
    /// A row the same to the byte as the one last recorded (most reads after a change of an
    /// order that moved no capital) leaves both as they are.
    fn set_capital(&mut self, capital: Capital) {
        let bytes = capital_bytes(&capital);
        if self.capital_recorded == Some(bytes) {
            return;
        }
        self.book.update_capital(capital);
        let free = rust_decimal::prelude::ToPrimitive::to_f64(&capital.free()).unwrap_or(0.0);
        self.metrics.set_capital_free(self.spec.profile, free);
        self.capital_recorded = Some(bytes);
    }

    /// Records a fill in its own transaction, passing the crash points around its commit.
    async fn record_fill(&mut self, report: &FillReport) -> Result<FillOutcome, StoreError> {
        let mut tx = self.store.tenant(self.spec.user).begin().await?;
        // Boxed: the store's fill is the largest future on an order's way, and inline it would
        // be built and moved at each of the many levels that wait on a fill.
        let recorded = Box::pin(tx.record_fill(report)).await?;
        #[cfg(feature = "lab")]
        crash::point(crash::AFTER_ANSWER_BEFORE_COMMIT);
        tx.commit().await?;
        #[cfg(feature = "lab")]
        crash::point(crash::AFTER_COMMIT);
        Ok(recorded)
    }

    /// Records one fill (a replay changes nothing) and tells the strategy about a new one.
    pub async fn apply_fill(&mut self, fill: &Fill) -> Result<(), EngineError> {
        let span = order_span(&fill.client_order_id);
        async move {
            let report = FillReport {
                client_order_id: fill.client_order_id.clone(),
                exchange_trade_id: fill.trade_id.to_string(),
                qty: fill.qty,
                price: fill.price,
                fee: fill.fee.get().max(rust_decimal::Decimal::ZERO),
                executed_at_ms: fill.time_ms,
            };
            let recorded = match self.record_fill(&report).await {
                Ok(recorded) => recorded,
                // Not this profile's order: the exchange account is the profile's own, so this is a
                // foreign order; reconciliation reports it.
                Err(StoreError::Lifecycle(error)) => {
                    tracing::warn!(%error, "fill not recorded");
                    return Ok(());
                }
                Err(error) => {
                    self.metrics
                        .lifecycle_transactions_total
                        .with_label_values(&[kind_label(None), "failed"])
                        .inc();
                    self.count_constraint_refusal(&error);
                    return Err(error.into());
                }
            };
            let (order, realized_pnl) = match recorded {
                FillOutcome::Duplicate => {
                    self.metrics
                        .lifecycle_transactions_total
                        .with_label_values(&["fill", "replayed"])
                        .inc();
                    return Ok(());
                }
                FillOutcome::Recorded {
                    order,
                    realized_pnl,
                } => (order, realized_pnl),
            };
            self.metrics
                .lifecycle_transactions_total
                .with_label_values(&[kind_label(Some(order.kind)), "committed"])
                .inc();
            self.note_realized(realized_pnl.saturating_sub(report.fee));
            let view = FillView {
                client_order_id: order.client_order_id.clone(),
                symbol: order.symbol.clone(),
                is_exit: order.kind == IntentKind::Exit,
                side: position_side(order.side, order.kind),
                price: fill.price.get().try_into().unwrap_or(0.0),
                qty: fill.qty.get().try_into().unwrap_or(0.0),
                fee: report.fee.try_into().unwrap_or(0.0),
                time_ms: fill.time_ms,
            };
            // A partial fill after a partial fill is no new status.
            let previous = self
                .book
                .open_orders
                .get(&order.client_order_id)
                .map(|o| o.status);
            if previous != Some(order.status) {
                self.count_status_entered(order.status);
            }
            self.after_order_change(*order).await?;
            self.warm_up_if_fresh(None);
            let result = self.strategy.on_fill(&view, self.book.view());
            // Decisions made on a fill are numbered by its trade id: re-made after a crash, they
            // carry the same client order ids. They run once the current step's handlers finish.
            self.pending_decisions
                .push_back((result, fill.trade_id.0.unsigned_abs()));
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// One event from the exchange's user-data stream.
    #[tracing::instrument(name = "profile_step", skip_all, fields(profile_id = %self.spec.profile, user_id = %self.spec.user))]
    pub async fn on_user_event(&mut self, event: &UserEvent) -> Result<StepOutcome, EngineError> {
        let (kind, id, symbol) = match event {
            UserEvent::Order(report) => ("order", &report.client_order_id, &report.symbol),
            UserEvent::Fill(fill) => ("fill", &fill.client_order_id, &fill.symbol),
        };
        // An exchange account may be shared: an event is this profile's only when its client
        // order id is one this profile derives. Any other is never looked up in the store, so
        // no profile applies another's orders or fills (under its own lease).
        if !id.is_derived_for(self.spec.profile, symbol) {
            self.foreign_events += 1;
            self.metrics
                .exchange_foreign_events_total
                .with_label_values(&[kind])
                .inc();
            tracing::debug!(client_order_id = %id, %symbol, kind, "an event about another profile's order, ignored");
            return Ok(StepOutcome::default());
        }
        match event {
            UserEvent::Order(report) => self.apply_report(report).await?,
            UserEvent::Fill(fill) => self.apply_fill(fill).await?,
        }
        let mut outcome = StepOutcome::default();
        self.drain_decisions(&mut outcome).await?;
        Ok(outcome)
    }

    /// Runs the decisions strategies made on fills during this step, and those their orders'
    /// fills lead to, up to [`PENDING_DECISIONS_PER_STEP_MAX`] rounds.
    pub(super) async fn drain_decisions(
        &mut self,
        outcome: &mut StepOutcome,
    ) -> Result<(), EngineError> {
        for _ in 0..PENDING_DECISIONS_PER_STEP_MAX {
            let Some((result, sequence)) = self.pending_decisions.pop_front() else {
                return Ok(());
            };
            self.decide(result, sequence, outcome).await?;
        }
        // A strategy that answers every fill with a new immediately-filled order would loop
        // for ever: what is left waits for the next step.
        Ok(())
    }
}

/// A capital row's columns as their exact bytes: two rows equal in value may differ in scale,
/// and the book keeps the row as read.
pub(super) type CapitalBytes = [[u8; 16]; 4];

fn capital_bytes(capital: &Capital) -> CapitalBytes {
    [
        capital.allocated.get().serialize(),
        capital.reserved_for_orders.get().serialize(),
        capital.reserved_for_positions.get().serialize(),
        capital.realized_pnl.get().serialize(),
    ]
}

fn kind_label(kind: Option<IntentKind>) -> &'static str {
    match kind {
        Some(IntentKind::Entry) => "entry",
        Some(IntentKind::Exit) => "exit",
        None => "fill",
    }
}

fn place_outcome_label(outcome: &PlaceOutcome) -> &'static str {
    match outcome {
        PlaceOutcome::Accepted(_)
        | PlaceOutcome::Filled { .. }
        | PlaceOutcome::PartiallyFilled { .. } => "ok",
        PlaceOutcome::Rejected { .. } => "rejected",
        PlaceOutcome::Unknown { .. } => "unknown",
        PlaceOutcome::RateLimited { .. } => "rate_limited",
        PlaceOutcome::Unavailable { .. } => "unavailable",
    }
}
