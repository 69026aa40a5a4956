//! The capital ledger: one capital row per profile and the journal it is derived from.
//!
//! The invariant `allocated - reserved_for_orders - reserved_for_positions + realized_pnl >= 0`
//! is checked here, before any write, so the kernel refuses an operation with a typed error
//! instead of leaning on the database's CHECK constraint (which is the second line, not the first).
//! Every change to a capital row is a [`CapitalDelta`] written to the append-only journal in the
//! same transaction; [`Capital::from_journal`] recomputes the row from those deltas.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::CapitalAmount;

/// Decimal places the ledger keeps: the scale of `NUMERIC(30, 8)` on PostgreSQL and of the
/// fixed-point integer units on SQLite.
pub const AMOUNT_SCALE: u32 = 8;

/// The largest magnitude of any capital column (10^10 quote). On SQLite a column holds at most
/// 10^18 units, so the four-term sum of the invariant stays inside a 64-bit integer.
pub const CAPITAL_MAX: Decimal = Decimal::from_parts(0x540B_E400, 0x2, 0, false, 0);

/// Why the ledger refused an operation. Nothing was written when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The operation needs more free capital than the profile has.
    #[error("insufficient capital: {needed} needed, {available} available")]
    InsufficientCapital {
        /// Free capital the operation would consume.
        needed: Decimal,
        /// Free capital before the operation.
        available: Decimal,
    },
    /// An amount that must be positive was zero or negative.
    #[error("{what} must be positive, got {value}")]
    NotPositive {
        /// What the amount was for.
        what: &'static str,
        /// The refused value.
        value: Decimal,
    },
    /// An amount that must not be negative was negative.
    #[error("{what} must not be negative, got {value}")]
    Negative {
        /// What the amount was for.
        what: &'static str,
        /// The refused value.
        value: Decimal,
    },
    /// An amount has more decimal places than the ledger keeps.
    #[error("{what} {value} has more than {AMOUNT_SCALE} decimal places")]
    TooPrecise {
        /// What the amount was for.
        what: &'static str,
        /// The refused value.
        value: Decimal,
    },
    /// A capital column would leave `[-CAPITAL_MAX, CAPITAL_MAX]`.
    #[error("{what} would be {value}, beyond the limit {CAPITAL_MAX}")]
    OutOfRange {
        /// Which column or amount.
        what: &'static str,
        /// The refused value.
        value: Decimal,
    },
    /// An amount computed from stored or reported values is beyond the range of a decimal.
    #[error("{what} is beyond the range of a decimal")]
    ArithmeticOverflow {
        /// The amount that could not be computed.
        what: &'static str,
    },
    /// An allocation needs more of its owner's capital budget than operators granted and the
    /// owner's profiles do not already hold.
    #[error(
        "the capital budget is exceeded: {requested} requested, {available} of the budget available \
         (granted {granted}, allocated {allocated}); an operator grants budgets"
    )]
    OverBudget {
        /// The allocation refused.
        requested: Decimal,
        /// What the budget had left.
        available: Decimal,
        /// What operators granted in all.
        granted: Decimal,
        /// What the owner's profiles already hold.
        allocated: Decimal,
    },
    /// A grant would take back more than the user's profiles leave unallocated, or bring the
    /// budget beyond [`CAPITAL_MAX`].
    #[error(
        "a grant of {amount} would leave the budget at {granted}, below its {allocated} allocated \
         or beyond the limit {CAPITAL_MAX}"
    )]
    GrantOutOfRange {
        /// The grant refused.
        amount: Decimal,
        /// What the budget would be.
        granted: Decimal,
        /// What the user's profiles hold.
        allocated: Decimal,
    },
    /// A reservation column would go below zero: the kernel's own bookkeeping is wrong.
    #[error("{what} would become negative ({value})")]
    NegativeReservation {
        /// Which column.
        what: &'static str,
        /// The value it would have.
        value: Decimal,
    },
}

/// Checks that `value` fits the ledger's scale and range.
pub fn check_amount(what: &'static str, value: Decimal) -> Result<Decimal, LedgerError> {
    if value.abs() > CAPITAL_MAX {
        return Err(LedgerError::OutOfRange { what, value });
    }
    if value.normalize().scale() > AMOUNT_SCALE {
        return Err(LedgerError::TooPrecise { what, value });
    }
    Ok(value)
}

/// Checks that `value` is positive and fits the ledger.
pub fn check_positive(what: &'static str, value: Decimal) -> Result<Decimal, LedgerError> {
    let value = check_amount(what, value)?;
    if value <= Decimal::ZERO {
        return Err(LedgerError::NotPositive { what, value });
    }
    Ok(value)
}

/// Checks that `value` is zero or positive and fits the ledger.
pub fn check_nonnegative(what: &'static str, value: Decimal) -> Result<Decimal, LedgerError> {
    let value = check_amount(what, value)?;
    if value < Decimal::ZERO {
        return Err(LedgerError::Negative { what, value });
    }
    Ok(value)
}

/// Rounds up to the ledger's scale: reservations never fall short of what they cover.
pub fn round_up(value: Decimal) -> Decimal {
    value.round_dp_with_strategy(AMOUNT_SCALE, rust_decimal::RoundingStrategy::AwayFromZero)
}

/// Rounds half away from zero to the ledger's scale: costs and proceeds of fills.
pub fn round_half(value: Decimal) -> Decimal {
    value.round_dp_with_strategy(
        AMOUNT_SCALE,
        rust_decimal::RoundingStrategy::MidpointAwayFromZero,
    )
}

/// A user's capital budget: what operators granted, and how much of it the user's profiles were
/// allocated. Allocations draw on it; only operators' grants move `granted`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// The sum of every grant.
    pub granted: Decimal,
    /// The sum of every allocation to the user's profiles.
    pub allocated: Decimal,
}

impl Budget {
    /// What the user may still allocate.
    pub fn available(&self) -> Decimal {
        self.granted - self.allocated
    }

    /// The budget after allocating `amount`, refused beyond the grant.
    pub fn draw(&self, amount: Decimal) -> Result<Budget, LedgerError> {
        let allocated = self.allocated + amount;
        if amount <= Decimal::ZERO || allocated > self.granted {
            return Err(LedgerError::OverBudget {
                requested: amount,
                available: self.available(),
                granted: self.granted,
                allocated: self.allocated,
            });
        }
        Ok(Budget {
            granted: self.granted,
            allocated,
        })
    }

    /// The budget after a grant of `amount` (negative: taken back), refused below what is
    /// allocated or beyond [`CAPITAL_MAX`].
    pub fn grant(&self, amount: Decimal) -> Result<Budget, LedgerError> {
        check_amount("grant", amount)?;
        let granted = self.granted + amount;
        if amount.is_zero() || granted < self.allocated || granted > CAPITAL_MAX {
            return Err(LedgerError::GrantOutOfRange {
                amount,
                granted,
                allocated: self.allocated,
            });
        }
        Ok(Budget {
            granted,
            allocated: self.allocated,
        })
    }
}

/// One profile's capital row.
///
/// Its columns are [`CapitalAmount`]s: within [`CAPITAL_MAX`] and the ledger's scale whatever
/// the row's origin, so free capital is always computable. They are signed, so that a row the
/// ledger's other checks would refuse can still be held and shown to the database's
/// constraints (see [`crate::plant`]); [`Capital::apply`] keeps them non-negative but for
/// `realized_pnl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capital {
    /// Capital the owner gave the profile.
    pub allocated: CapitalAmount,
    /// Capital held by orders that may still fill.
    pub reserved_for_orders: CapitalAmount,
    /// Cost of open positions.
    pub reserved_for_positions: CapitalAmount,
    /// Realized profit and loss, fees included.
    pub realized_pnl: CapitalAmount,
}

impl Capital {
    /// Capital that no order or position holds:
    /// `allocated - reserved_for_orders - reserved_for_positions + realized_pnl`.
    pub fn free(&self) -> Decimal {
        // Exact: four terms within CAPITAL_MAX (10^10) sum far inside a decimal's range.
        self.allocated.get() - self.reserved_for_orders.get() - self.reserved_for_positions.get()
            + self.realized_pnl.get()
    }

    /// Allocated capital plus realized PnL. Exact, as [`Capital::free`] is.
    pub fn equity(&self) -> Decimal {
        self.allocated.get() + self.realized_pnl.get()
    }

    /// Capital held by open orders and positions. Exact, as [`Capital::free`] is.
    pub fn reserved(&self) -> Decimal {
        self.reserved_for_positions.get() + self.reserved_for_orders.get()
    }

    /// True when the capital invariant holds.
    pub fn holds_invariant(&self) -> bool {
        self.free() >= Decimal::ZERO
            && self.allocated.get() >= Decimal::ZERO
            && self.reserved_for_orders.get() >= Decimal::ZERO
            && self.reserved_for_positions.get() >= Decimal::ZERO
    }

    /// The row after `delta`, or the reason the ledger refuses it.
    ///
    /// Every column must stay within [`CAPITAL_MAX`], reservations must stay non-negative, and
    /// free capital must stay non-negative (the capital invariant).
    pub fn apply(&self, delta: &CapitalDelta) -> Result<Capital, LedgerError> {
        let next = self.plus_unchecked(delta)?;
        for (what, value) in next.columns() {
            if what != "realized_pnl" && value < Decimal::ZERO {
                return Err(LedgerError::NegativeReservation { what, value });
            }
        }
        let free_before = self.free();
        let free_after = next.free();
        if free_after < Decimal::ZERO {
            return Err(LedgerError::InsufficientCapital {
                needed: free_before - free_after,
                available: free_before,
            });
        }
        debug_assert!(next.holds_invariant());
        Ok(next)
    }

    /// The row after `delta`, without the ledger's checks of sign and of the invariant: what
    /// the database's constraints alone would see when the kernel's check is planted away (see
    /// [`crate::plant`]). A column beyond [`CAPITAL_MAX`] or the ledger's scale is refused, as
    /// neither database could hold it.
    pub(crate) fn plus_unchecked(&self, delta: &CapitalDelta) -> Result<Capital, LedgerError> {
        let sum = |what, a: CapitalAmount, b: Decimal| {
            a.get()
                .checked_add(b)
                .ok_or(LedgerError::ArithmeticOverflow { what })
        };
        let allocated = sum("allocated", self.allocated, delta.allocated)?;
        let reserved_for_orders = sum(
            "reserved_for_orders",
            self.reserved_for_orders,
            delta.reserved_for_orders,
        )?;
        let reserved_for_positions = sum(
            "reserved_for_positions",
            self.reserved_for_positions,
            delta.reserved_for_positions,
        )?;
        let realized_pnl = sum("realized_pnl", self.realized_pnl, delta.realized_pnl)?;
        Ok(Capital {
            allocated: CapitalAmount::named("allocated", allocated)?,
            reserved_for_orders: CapitalAmount::named("reserved_for_orders", reserved_for_orders)?,
            reserved_for_positions: CapitalAmount::named(
                "reserved_for_positions",
                reserved_for_positions,
            )?,
            realized_pnl: CapitalAmount::named("realized_pnl", realized_pnl)?,
        })
    }

    /// The row the journal `deltas` add up to, starting from zero, or the column whose sum left
    /// the ledger's range.
    pub fn from_journal<'a>(
        deltas: impl IntoIterator<Item = &'a CapitalDelta>,
    ) -> Result<Capital, LedgerError> {
        deltas
            .into_iter()
            .try_fold(Capital::default(), |sum, delta| sum.plus_unchecked(delta))
    }

    fn columns(&self) -> [(&'static str, Decimal); 4] {
        [
            ("allocated", self.allocated.get()),
            ("reserved_for_orders", self.reserved_for_orders.get()),
            ("reserved_for_positions", self.reserved_for_positions.get()),
            ("realized_pnl", self.realized_pnl.get()),
        ]
    }
}

impl fmt::Display for Capital {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "allocated {} reserved_for_orders {} reserved_for_positions {} realized_pnl {}",
            self.allocated,
            self.reserved_for_orders,
            self.reserved_for_positions,
            self.realized_pnl
        )
    }
}

/// A change to a capital row, as written to the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapitalDelta {
    /// Change of `allocated`.
    pub allocated: Decimal,
    /// Change of `reserved_for_orders`.
    pub reserved_for_orders: Decimal,
    /// Change of `reserved_for_positions`.
    pub reserved_for_positions: Decimal,
    /// Change of `realized_pnl`.
    pub realized_pnl: Decimal,
}

impl CapitalDelta {
    /// True when the delta changes nothing (and so is not journaled).
    pub fn is_zero(&self) -> bool {
        *self == CapitalDelta::default()
    }
}

/// What a journal entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JournalKind {
    /// Capital given to the profile.
    Allocate,
    /// An ENTRY order's reservation, written ahead of the exchange call.
    EntryReserve,
    /// An ENTRY fill: reservation moves from the order to the position.
    Fill,
    /// A cancelled, rejected or expired order gives back what it still held.
    CancelRelease,
    /// An EXIT fill releases the cost of the closed part of the position.
    Exit,
    /// A trading fee, charged to realized PnL.
    Fee,
    /// The profit or loss of an EXIT fill.
    RealizedPnl,
}

impl JournalKind {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            JournalKind::Allocate => "ALLOCATE",
            JournalKind::EntryReserve => "ENTRY_RESERVE",
            JournalKind::Fill => "FILL",
            JournalKind::CancelRelease => "CANCEL_RELEASE",
            JournalKind::Exit => "EXIT",
            JournalKind::Fee => "FEE",
            JournalKind::RealizedPnl => "REALIZED_PNL",
        }
    }
}

/// The result of recomputing a capital row from its journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildReport {
    /// The row as stored before the rebuild.
    pub stored: Capital,
    /// The row the journal adds up to (now stored, when `repaired`).
    pub journal: Capital,
    /// True when the stored row differed from the journal and was overwritten.
    pub repaired: bool,
}

impl RebuildReport {
    /// True when the stored row differed from the journal.
    pub fn differs(&self) -> bool {
        self.stored != self.journal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn amount(value: Decimal) -> CapitalAmount {
        CapitalAmount::new(value).unwrap()
    }

    fn funded(allocated: Decimal) -> Capital {
        Capital {
            allocated: amount(allocated),
            ..Capital::default()
        }
    }

    #[test]
    fn capital_max_is_ten_billion() {
        assert_eq!(CAPITAL_MAX, dec!(10_000_000_000));
    }

    #[test]
    fn reservation_beyond_free_capital_is_insufficient_capital() {
        let capital = funded(dec!(100));
        let delta = CapitalDelta {
            reserved_for_orders: dec!(100.00000001),
            ..CapitalDelta::default()
        };
        assert_eq!(
            capital.apply(&delta),
            Err(LedgerError::InsufficientCapital {
                needed: dec!(100.00000001),
                available: dec!(100)
            })
        );
        let exact = CapitalDelta {
            reserved_for_orders: dec!(100),
            ..CapitalDelta::default()
        };
        assert_eq!(capital.apply(&exact).unwrap().free(), Decimal::ZERO);
    }

    #[test]
    fn release_below_zero_is_a_bookkeeping_error() {
        let delta = CapitalDelta {
            reserved_for_orders: dec!(-1),
            ..CapitalDelta::default()
        };
        assert!(matches!(
            funded(dec!(5)).apply(&delta),
            Err(LedgerError::NegativeReservation { .. })
        ));
    }

    #[test]
    fn amounts_are_checked_for_scale_sign_and_range() {
        assert!(matches!(
            check_positive("x", dec!(0.000000001)),
            Err(LedgerError::TooPrecise { .. })
        ));
        assert!(matches!(
            check_positive("x", dec!(0)),
            Err(LedgerError::NotPositive { .. })
        ));
        assert!(matches!(
            check_nonnegative("x", dec!(-0.1)),
            Err(LedgerError::Negative { .. })
        ));
        assert!(matches!(
            check_amount("x", dec!(10_000_000_000.00000001)),
            Err(LedgerError::OutOfRange { .. })
        ));
        assert_eq!(check_positive("x", dec!(1.50000000)), Ok(dec!(1.5)));
    }

    #[test]
    fn delta_beyond_a_decimal_is_an_overflow_not_a_panic() {
        let delta = CapitalDelta {
            realized_pnl: Decimal::MAX,
            ..CapitalDelta::default()
        };
        let capital = funded(dec!(1)).plus_unchecked(&CapitalDelta {
            realized_pnl: CAPITAL_MAX,
            ..CapitalDelta::default()
        });
        assert_eq!(
            capital.unwrap().apply(&delta),
            Err(LedgerError::ArithmeticOverflow {
                what: "realized_pnl"
            })
        );
        assert!(Capital::from_journal(&[delta, delta]).is_err());
    }

    #[test]
    fn column_beyond_the_ledger_range_is_refused_even_unchecked() {
        let delta = CapitalDelta {
            reserved_for_orders: CAPITAL_MAX + dec!(1),
            realized_pnl: -CAPITAL_MAX - dec!(1),
            ..CapitalDelta::default()
        };
        let refusal = Err(LedgerError::OutOfRange {
            what: "reserved_for_orders",
            value: CAPITAL_MAX + dec!(1),
        });
        assert_eq!(Capital::default().apply(&delta), refusal);
        assert_eq!(Capital::default().plus_unchecked(&delta), refusal);
        assert!(matches!(
            CapitalAmount::new(dec!(0.000000001)),
            Err(LedgerError::TooPrecise { .. })
        ));
    }

    #[test]
    fn free_capital_of_the_most_extreme_row_is_computed_and_breaks_the_invariant() {
        let capital = Capital {
            reserved_for_orders: amount(CAPITAL_MAX),
            reserved_for_positions: amount(CAPITAL_MAX),
            realized_pnl: amount(-CAPITAL_MAX),
            ..Capital::default()
        };
        assert_eq!(capital.free(), -CAPITAL_MAX * dec!(3));
        assert!(!capital.holds_invariant());
    }

    #[test]
    fn unchecked_sum_keeps_a_negative_reservation_for_the_database_to_refuse() {
        let delta = CapitalDelta {
            reserved_for_positions: dec!(-1),
            ..CapitalDelta::default()
        };
        let planted = funded(dec!(5)).plus_unchecked(&delta).unwrap();
        assert_eq!(planted.reserved_for_positions.get(), dec!(-1));
        assert!(!planted.holds_invariant());
        assert_eq!(
            funded(dec!(5)).apply(&delta),
            Err(LedgerError::NegativeReservation {
                what: "reserved_for_positions",
                value: dec!(-1)
            })
        );
    }

    #[test]
    fn journal_sum_rebuilds_the_row() {
        let deltas = [
            CapitalDelta {
                allocated: dec!(10),
                ..CapitalDelta::default()
            },
            CapitalDelta {
                reserved_for_orders: dec!(4),
                ..CapitalDelta::default()
            },
            CapitalDelta {
                reserved_for_orders: dec!(-4),
                reserved_for_positions: dec!(3.5),
                realized_pnl: dec!(-0.1),
                ..CapitalDelta::default()
            },
        ];
        let rebuilt = Capital::from_journal(&deltas).unwrap();
        assert_eq!(rebuilt.free(), dec!(6.4));
        assert!(rebuilt.holds_invariant());
    }
}
