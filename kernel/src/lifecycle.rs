//! The order lifecycle: write-ahead orders, fills, cancels and the ENTRY/EXIT rows they produce.
//!
//! An order is written ahead (status `PENDING_SUBMIT`, capital reserved) before the exchange is
//! called; what the exchange answers is applied afterwards in one transaction. Lifecycle rows
//! (ENTRY: the position; EXIT: its closing) appear only when the exchange reports a fill. The
//! arithmetic of those moves lives here, as pure functions the store calls and tests check.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ids::{ClientOrderId, IntentKind, ProfileId, Symbol, UserId};
use crate::ledger::{self, CapitalDelta, LedgerError};
use crate::lock::FencedLock;
use crate::market::Side;
use crate::money::{FilledQty, Price, Qty, Reservation};
use crate::order::{InvalidTransition, OrderStatus};

/// The longest exchange trade id or exchange order id accepted.
pub const EXCHANGE_ID_LEN_MAX: usize = 64;

/// Why a lifecycle operation was refused. Nothing was written when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// The client order id exists with a different payload: a replay must repeat the original.
    #[error("client order id {0} was already written with a different payload")]
    ReplayMismatch(ClientOrderId),
    /// The exchange trade id was already recorded with a different payload.
    #[error("exchange trade {0} was already recorded with a different payload")]
    FillReplayMismatch(String),
    /// The client order id belongs to an order this tenant cannot see.
    #[error("client order id {0} is taken")]
    ClientOrderIdTaken(ClientOrderId),
    /// No order with this client order id exists for this tenant.
    #[error("no order {0}")]
    UnknownOrder(ClientOrderId),
    /// An ENTRY order or an open position already exists for (profile, symbol).
    #[error("an entry is already in flight or open for {symbol} on profile {profile}")]
    EntryInFlight {
        /// The profile.
        profile: ProfileId,
        /// The symbol.
        symbol: Symbol,
    },
    /// An EXIT needs an open position.
    #[error("no open position for {symbol} on profile {profile}")]
    NoOpenPosition {
        /// The profile.
        profile: ProfileId,
        /// The symbol.
        symbol: Symbol,
    },
    /// An EXIT order or fill larger than the open position (less exits already in flight).
    #[error("exit of {qty} exceeds the open quantity {open}")]
    ExitExceedsPosition {
        /// Quantity asked for.
        qty: Decimal,
        /// Quantity open and not already being exited.
        open: Decimal,
    },
    /// A fill would take an order beyond its quantity.
    #[error("fill of {qty} on order {order} exceeds its remaining quantity {remaining}")]
    Overfill {
        /// The order.
        order: ClientOrderId,
        /// The fill quantity.
        qty: Decimal,
        /// Quantity not yet filled.
        remaining: Decimal,
    },
    /// The reported status contradicts the stored one.
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
    /// Only CANCELED, REJECTED and EXPIRED end an order without a fill.
    #[error("{0} is not a status that releases an order")]
    NotAReleaseStatus(OrderStatus),
    /// An exchange id was empty, too long or not printable ASCII.
    #[error(
        "invalid exchange id {0:?}: expected 1 to {EXCHANGE_ID_LEN_MAX} printable ASCII characters"
    )]
    InvalidExchangeId(String),
    /// The exit side must close the position's side.
    #[error("an exit of a {position:?} position must be a {expected:?} order")]
    WrongExitSide {
        /// The side that opened the position.
        position: Side,
        /// The side that closes it.
        expected: Side,
    },
}

/// Checks an exchange trade or order id.
pub fn check_exchange_id(text: &str) -> Result<(), LifecycleError> {
    let ok = !text.is_empty()
        && text.len() <= EXCHANGE_ID_LEN_MAX
        && text.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(LifecycleError::InvalidExchangeId(text.to_owned()))
    }
}

/// An ENTRY decision the kernel writes ahead of the exchange call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRequest {
    /// The profile.
    pub profile: ProfileId,
    /// The deterministic client order id.
    pub client_order_id: ClientOrderId,
    /// The instrument.
    pub symbol: Symbol,
    /// BUY opens a long, SELL a short.
    pub side: Side,
    /// Quantity to open.
    pub qty: Qty,
    /// Limit price, or the worst price the kernel accepts: the reservation is `price * qty`.
    pub price: Price,
    /// The entry lock this decision was made under.
    pub lock: FencedLock,
}

/// An EXIT decision the kernel writes ahead of the exchange call. Exits reserve nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRequest {
    /// The profile.
    pub profile: ProfileId,
    /// The deterministic client order id.
    pub client_order_id: ClientOrderId,
    /// The instrument whose open position it reduces.
    pub symbol: Symbol,
    /// Quantity to close.
    pub qty: Qty,
    /// Limit or reference price.
    pub price: Price,
}

/// A fill as the exchange reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillReport {
    /// The order it belongs to.
    pub client_order_id: ClientOrderId,
    /// The exchange's trade id: the idempotency key of the fill.
    pub exchange_trade_id: String,
    /// Filled quantity.
    pub qty: Qty,
    /// Fill price.
    pub price: Price,
    /// Fee charged, in quote currency (zero or positive).
    pub fee: Decimal,
    /// When the exchange executed it, milliseconds since the Unix epoch.
    pub executed_at_ms: i64,
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// The client order id.
    pub client_order_id: ClientOrderId,
    /// The owner.
    pub user: UserId,
    /// The profile.
    pub profile: ProfileId,
    /// The instrument.
    pub symbol: Symbol,
    /// ENTRY or EXIT.
    pub kind: IntentKind,
    /// BUY or SELL.
    pub side: Side,
    /// Ordered quantity.
    pub qty: Qty,
    /// Limit or reference price.
    pub price: Price,
    /// Capital reserved when written ahead (zero for exits).
    pub reserved: Reservation,
    /// Part of the reservation not yet moved to a position or released.
    pub reserved_remaining: Reservation,
    /// Quantity filled so far.
    pub filled_qty: FilledQty,
    /// Current status.
    pub status: OrderStatus,
    /// The lock it was written under, with its fence.
    pub lock: Option<FencedLock>,
    /// The exchange's id, once known: shared by the record's copies (the store's row, its undo
    /// entry, the engine's book), which a trade makes several of.
    pub exchange_order_id: Option<std::sync::Arc<str>>,
}

impl OrderRecord {
    /// True when `request` repeats exactly what this ENTRY order was written with.
    pub fn matches_entry(&self, request: &EntryRequest) -> bool {
        self.kind == IntentKind::Entry
            && self.profile == request.profile
            && self.symbol == request.symbol
            && self.side == request.side
            && self.qty == request.qty
            && self.price == request.price
    }

    /// True when `request` repeats exactly what this EXIT order was written with.
    pub fn matches_exit(&self, request: &ExitRequest) -> bool {
        self.kind == IntentKind::Exit
            && self.profile == request.profile
            && self.symbol == request.symbol
            && self.qty == request.qty
            && self.price == request.price
    }

    /// Quantity not yet filled (negative only for a stored row that breaks
    /// `orders_filled_bounded`).
    pub fn qty_remaining(&self) -> Decimal {
        self.qty.remaining_after(self.filled_qty)
    }

    /// The filled quantity after a fill of `qty`, refused beyond the ordered quantity.
    pub fn filled_after(&self, qty: Qty) -> Result<FilledQty, LifecycleError> {
        let remaining = self.qty_remaining();
        let overfill = || LifecycleError::Overfill {
            order: self.client_order_id.clone(),
            qty: qty.get(),
            remaining,
        };
        if qty.get() > remaining {
            return Err(overfill());
        }
        self.filled_qty.checked_add(qty).map_err(|_| overfill())
    }

    /// The order after a fill that brought its filled quantity to `filled_qty` (see
    /// [`OrderRecord::filled_after`]) and released `released` of its reservation, in status
    /// `next`; refused when more is released than the order still reserves.
    pub fn after_fill(
        &self,
        filled_qty: FilledQty,
        released: Reservation,
        next: OrderStatus,
    ) -> Result<OrderRecord, LedgerError> {
        let reserved_remaining = self
            .reserved_remaining
            .release("reserved_remaining", released.get())?;
        Ok(OrderRecord {
            filled_qty,
            reserved_remaining,
            status: next,
            ..self.clone()
        })
    }
}

/// An open position: the open ENTRY lifecycle row of (profile, symbol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The ENTRY lifecycle row.
    pub lifecycle_id: i64,
    /// The instrument.
    pub symbol: Symbol,
    /// BUY: long, SELL: short.
    pub side: Side,
    /// Quantity still open: an open position has some.
    pub qty_open: Qty,
    /// Cost of the open quantity (what `reserved_for_positions` holds for it).
    pub cost_open: Reservation,
}

/// What a write-ahead did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAhead {
    /// The order row and its reservation were written.
    Written(OrderRecord),
    /// The same request was already written: nothing changed.
    Replayed(OrderRecord),
}

impl WriteAhead {
    /// The stored order.
    pub fn order(&self) -> &OrderRecord {
        match self {
            WriteAhead::Written(order) | WriteAhead::Replayed(order) => order,
        }
    }
}

/// What recording a fill did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillOutcome {
    /// The fill was new and is now recorded.
    Recorded {
        /// The order after the fill.
        order: Box<OrderRecord>,
        /// Realized PnL of the fill before fees (zero for ENTRY fills).
        realized_pnl: Decimal,
    },
    /// The same fill was already recorded: nothing changed.
    Duplicate,
}

/// What applying a status report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusOutcome {
    /// The order moved forward.
    Changed(OrderRecord),
    /// The report was a repeat or stale: nothing changed.
    Unchanged(OrderRecord),
}

impl StatusOutcome {
    /// The stored order.
    pub fn order(&self) -> &OrderRecord {
        match self {
            StatusOutcome::Changed(order) | StatusOutcome::Unchanged(order) => order,
        }
    }
}

/// The capital an ENTRY of `qty` at `price` reserves: the notional, rounded up.
pub fn entry_reservation(price: Price, qty: Qty) -> Result<Reservation, LedgerError> {
    let notional = mul("entry reservation", price.get(), qty.get())?;
    let reserved = ledger::check_positive("entry reservation", ledger::round_up(notional))?;
    Reservation::new(reserved)
}

/// `a * b`, or the overflow of `what`.
fn mul(what: &'static str, a: Decimal, b: Decimal) -> Result<Decimal, LedgerError> {
    a.checked_mul(b)
        .ok_or(LedgerError::ArithmeticOverflow { what })
}

/// `a - b`, or the overflow of `what`.
fn sub(what: &'static str, a: Decimal, b: Decimal) -> Result<Decimal, LedgerError> {
    a.checked_sub(b)
        .ok_or(LedgerError::ArithmeticOverflow { what })
}

/// The capital moves of an ENTRY fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFillMove {
    /// Reservation the fill takes off the order.
    pub released: Reservation,
    /// Cost added to the position.
    pub cost: Decimal,
    /// The journal delta (fee included).
    pub delta: CapitalDelta,
}

/// What an ENTRY fill of `qty` at `price` with `fee` moves, given the order's state.
///
/// The order releases the part of its reservation that covered the filled quantity (all that is
/// left when this fill completes the order); the position costs the fill's notional. Products of
/// prices and quantities within [`MAGNITUDE_MAX`](crate::money::MAGNITUDE_MAX) stay inside a
/// decimal; they are checked all the same ([`LedgerError::ArithmeticOverflow`]), and amounts
/// beyond the ledger's range are refused when the delta is applied.
pub fn entry_fill_move(
    order: &OrderRecord,
    qty: Qty,
    price: Price,
    fee: Decimal,
) -> Result<EntryFillMove, LedgerError> {
    let remaining = order.reserved_remaining;
    let released = if qty.get() == order.qty_remaining() {
        remaining
    } else {
        let covered = mul(
            "reservation released by the fill",
            qty.get(),
            order.price.get(),
        )?;
        // At most what remains, and at the ledger's scale: a reservation.
        Reservation::new(ledger::round_up(covered).min(remaining.get()))?
    };
    let cost = ledger::round_half(mul("cost of the fill", qty.get(), price.get())?);
    let delta = CapitalDelta {
        reserved_for_orders: -released.get(),
        reserved_for_positions: cost,
        realized_pnl: -fee,
        ..CapitalDelta::default()
    };
    Ok(EntryFillMove {
        released,
        cost,
        delta,
    })
}

/// The capital moves of an EXIT fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitFillMove {
    /// Position cost released by the closed quantity.
    pub cost_released: Decimal,
    /// Notional of the exit fill.
    pub proceeds: Decimal,
    /// Realized PnL before fees.
    pub pnl: Decimal,
    /// The journal delta (fee included).
    pub delta: CapitalDelta,
}

/// What an EXIT fill of `qty` at `price` with `fee` moves, given the open position, or
/// [`LedgerError::ArithmeticOverflow`] when an amount computed from the position, the fill or
/// the fee leaves the range of a decimal.
pub fn try_exit_fill_move(
    position: &Position,
    qty: Decimal,
    price: Decimal,
    fee: Decimal,
) -> Result<ExitFillMove, LedgerError> {
    let (qty_open, cost_open) = (position.qty_open.get(), position.cost_open.get());
    assert!(qty <= qty_open, "exit fill checked against the position");
    let cost_released = if qty == qty_open {
        cost_open
    } else {
        let cost = mul("cost released by the exit", cost_open, qty)?;
        let cost = (cost.checked_div(qty_open)).ok_or(LedgerError::ArithmeticOverflow {
            what: "cost released by the exit",
        })?;
        ledger::round_half(cost).min(cost_open)
    };
    let proceeds = ledger::round_half(mul("proceeds of the exit", qty, price)?);
    let pnl = match position.side {
        Side::Buy => sub("realized pnl", proceeds, cost_released)?,
        Side::Sell => sub("realized pnl", cost_released, proceeds)?,
    };
    let delta = CapitalDelta {
        reserved_for_positions: -cost_released,
        realized_pnl: sub("realized pnl after the fee", pnl, fee)?,
        ..CapitalDelta::default()
    };
    Ok(ExitFillMove {
        cost_released,
        proceeds,
        pnl,
        delta,
    })
}

/// The status an order has after a fill brings its filled quantity to `filled_qty`.
pub fn status_after_fill(order_qty: Qty, filled_qty: FilledQty) -> OrderStatus {
    if filled_qty.get() == order_qty.get() {
        OrderStatus::Filled
    } else {
        OrderStatus::PartiallyFilled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::MAGNITUDE_MAX;
    use rust_decimal_macros::dec;

    fn qty(value: Decimal) -> Qty {
        Qty::new(value).unwrap()
    }

    fn price(value: Decimal) -> Price {
        Price::new(value).unwrap()
    }

    fn order(qty: Qty, price: Price) -> OrderRecord {
        let profile = ProfileId::new_random();
        let symbol = Symbol::new("BTCUSDT").unwrap();
        let reserved = entry_reservation(price, qty).unwrap();
        OrderRecord {
            client_order_id: ClientOrderId::derive(profile, &symbol, 1, IntentKind::Entry),
            user: UserId::new_random(),
            profile,
            symbol,
            kind: IntentKind::Entry,
            side: Side::Buy,
            qty,
            price,
            reserved,
            reserved_remaining: reserved,
            filled_qty: FilledQty::ZERO,
            status: OrderStatus::New,
            lock: None,
            exchange_order_id: None,
        }
    }

    #[test]
    fn reservation_rounds_up_never_under_reserving() {
        assert_eq!(
            entry_reservation(price(dec!(0.33333333)), qty(dec!(0.5)))
                .unwrap()
                .get(),
            dec!(0.16666667)
        );
    }

    #[test]
    fn completing_fill_releases_everything_left() {
        let o = order(qty(dec!(3)), price(dec!(0.33333333)));
        let first = entry_fill_move(&o, qty(dec!(1)), price(dec!(0.3)), dec!(0)).unwrap();
        assert_eq!(first.released.get(), dec!(0.33333333));
        let filled = o.filled_after(qty(dec!(1))).unwrap();
        let o = o
            .after_fill(filled, first.released, OrderStatus::PartiallyFilled)
            .unwrap();
        let last = entry_fill_move(&o, qty(dec!(2)), price(dec!(0.3)), dec!(0.01)).unwrap();
        assert_eq!(first.released.get() + last.released.get(), o.reserved.get());
        assert_eq!(last.delta.realized_pnl, dec!(-0.01));
        let filled = o.filled_after(qty(dec!(2))).unwrap();
        assert_eq!(status_after_fill(o.qty, filled), OrderStatus::Filled);
        let done = o
            .after_fill(filled, last.released, OrderStatus::Filled)
            .unwrap();
        assert_eq!(done.reserved_remaining, Reservation::ZERO);
        assert_eq!(done.qty_remaining(), Decimal::ZERO);
    }

    #[test]
    fn fill_beyond_the_order_or_release_beyond_the_reservation_is_refused() {
        let o = order(qty(dec!(3)), price(dec!(2)));
        assert_eq!(
            o.filled_after(qty(dec!(3.00000001))),
            Err(LifecycleError::Overfill {
                order: o.client_order_id.clone(),
                qty: dec!(3.00000001),
                remaining: dec!(3),
            })
        );
        let filled = o.filled_after(qty(dec!(1))).unwrap();
        assert_eq!(
            o.after_fill(
                filled,
                Reservation::new(dec!(6.00000001)).unwrap(),
                OrderStatus::PartiallyFilled
            ),
            Err(LedgerError::NegativeReservation {
                what: "reserved_remaining",
                value: dec!(-0.00000001)
            })
        );
    }

    #[test]
    fn short_exit_below_entry_is_a_profit() {
        let position = Position {
            lifecycle_id: 1,
            symbol: Symbol::new("BTCUSDT").unwrap(),
            side: Side::Sell,
            qty_open: qty(dec!(2)),
            cost_open: Reservation::new(dec!(200)).unwrap(),
        };
        let half = try_exit_fill_move(&position, dec!(1), dec!(90), dec!(0.5)).unwrap();
        assert_eq!(half.cost_released, dec!(100));
        assert_eq!(half.pnl, dec!(10));
        assert_eq!(half.delta.realized_pnl, dec!(9.5));
    }

    #[test]
    fn fill_at_the_largest_price_and_quantity_is_refused_by_the_ledger_not_a_panic() {
        let largest = order(qty(dec!(1)), price(dec!(1)));
        let (qty, price) = (qty(MAGNITUDE_MAX), price(MAGNITUDE_MAX));
        let o = OrderRecord {
            qty,
            price,
            ..largest
        };
        let mv = entry_fill_move(&o, qty, price, dec!(0)).unwrap();
        assert_eq!(mv.cost, MAGNITUDE_MAX * MAGNITUDE_MAX);
        assert!(matches!(
            crate::ledger::Capital::default().apply(&mv.delta),
            Err(LedgerError::OutOfRange { .. })
        ));
        assert!(matches!(
            entry_reservation(price, qty),
            Err(LedgerError::OutOfRange { .. })
        ));
    }

    #[test]
    fn exit_at_a_price_beyond_a_decimal_is_an_overflow_not_a_panic() {
        let position = Position {
            lifecycle_id: 1,
            symbol: Symbol::new("BTCUSDT").unwrap(),
            side: Side::Buy,
            qty_open: qty(MAGNITUDE_MAX),
            cost_open: Reservation::new(crate::ledger::CAPITAL_MAX).unwrap(),
        };
        assert_eq!(
            try_exit_fill_move(&position, dec!(10_000_000_000), Decimal::MAX, dec!(0)),
            Err(LedgerError::ArithmeticOverflow {
                what: "proceeds of the exit"
            })
        );
    }
}
