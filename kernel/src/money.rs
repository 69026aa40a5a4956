//! Money and quantities as decimals. Nothing inside the kernel holds money in a float.
//!
//! Every amount a record holds is a newtype whose constructor checks it: [`Price`] and [`Qty`]
//! (positive), [`FilledQty`] (zero or positive) and [`Amount`] (signed) within
//! [`MAGNITUDE_MAX`]; [`CapitalAmount`] (signed) and [`Reservation`] (zero or positive) within
//! the ledger's range and scale. A value read from a store goes through the same constructors,
//! so a row out of range is a typed error, never a panic further on.

use std::fmt;

use rust_decimal::Decimal;
use rust_decimal::prelude::FromPrimitive;
use serde::{Deserialize, Serialize};

use crate::ledger::{self, LedgerError};

/// The largest magnitude any amount, price or quantity may have (10^12): far above any real
/// order, and low enough that a price times a quantity (at most 10^24) cannot overflow `Decimal`.
pub const MAGNITUDE_MAX: Decimal = Decimal::from_parts(0xD4A5_1000, 0xE8, 0, false, 0);

/// Why a number was refused as money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// NaN or an infinity.
    #[error("{what} is not a finite number")]
    NotFinite {
        /// What the number was meant to be.
        what: &'static str,
    },
    /// Zero or negative where only a positive number makes sense.
    #[error("{what} must be positive, got {value}")]
    NotPositive {
        /// What the number was meant to be.
        what: &'static str,
        /// The refused value.
        value: Decimal,
    },
    /// Negative where only zero or a positive number makes sense.
    #[error("{what} must not be negative, got {value}")]
    Negative {
        /// What the number was meant to be.
        what: &'static str,
        /// The refused value.
        value: Decimal,
    },
    /// Larger in magnitude than [`MAGNITUDE_MAX`].
    #[error("{what} {value} is larger than the limit {max}", max = MAGNITUDE_MAX)]
    TooLarge {
        /// What the number was meant to be.
        what: &'static str,
        /// The refused value.
        value: Decimal,
    },
}

/// Converts an untrusted float (from a plugin or market data) into a bounded decimal.
pub fn decimal_from_f64(what: &'static str, value: f64) -> Result<Decimal, MoneyError> {
    if !value.is_finite() {
        return Err(MoneyError::NotFinite { what });
    }
    // Rounded to 12 places: floats carry noise below that, and no exchange has finer steps.
    let decimal = Decimal::from_f64(value)
        .ok_or(MoneyError::TooLarge {
            what,
            value: MAGNITUDE_MAX,
        })?
        .round_dp(12);
    check_magnitude(what, decimal)
}

fn check_magnitude(what: &'static str, value: Decimal) -> Result<Decimal, MoneyError> {
    if value.abs() > MAGNITUDE_MAX {
        Err(MoneyError::TooLarge { what, value })
    } else {
        Ok(value)
    }
}

fn check_positive(what: &'static str, value: Decimal) -> Result<Decimal, MoneyError> {
    let value = check_magnitude(what, value)?;
    if value <= Decimal::ZERO {
        Err(MoneyError::NotPositive { what, value })
    } else {
        Ok(value)
    }
}

fn check_nonnegative(what: &'static str, value: Decimal) -> Result<Decimal, MoneyError> {
    let value = check_magnitude(what, value)?;
    if value < Decimal::ZERO {
        Err(MoneyError::Negative { what, value })
    } else {
        Ok(value)
    }
}

/// Declares a newtype over a decimal that only `$check` (of `$what`, returning `$error`) lets
/// in. Serialized as the decimal it holds, so a record's JSON is what the decimal's would be;
/// deserialization checks as `new` does.
macro_rules! checked_decimal {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:path, $error:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "Decimal", into = "Decimal")]
        pub struct $name(Decimal);

        impl $name {
            /// Checks that `value` is one the type holds (see its documentation).
            pub fn new(value: Decimal) -> Result<Self, $error> {
                $check($what, value).map(Self)
            }

            /// The decimal inside.
            pub const fn get(self) -> Decimal {
                self.0
            }
        }

        impl TryFrom<Decimal> for $name {
            type Error = $error;
            fn try_from(value: Decimal) -> Result<Self, $error> {
                Self::new(value)
            }
        }

        impl From<$name> for Decimal {
            fn from(value: $name) -> Decimal {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

/// Adds `from_f64`, for a number a plugin or market data supplied, to a positive type.
macro_rules! from_untrusted_float {
    ($name:ident, $what:literal) => {
        impl $name {
            /// Converts an untrusted float, refusing NaN, infinities, zero, negatives and excess.
            pub fn from_f64(value: f64) -> Result<Self, MoneyError> {
                Self::new(decimal_from_f64($what, value)?)
            }
        }
    };
}

checked_decimal!(
    /// A price in quote currency per unit of base, always positive, at most [`MAGNITUDE_MAX`].
    Price,
    "price",
    check_positive,
    MoneyError
);
from_untrusted_float!(Price, "price");

checked_decimal!(
    /// A quantity of base currency, always positive, at most [`MAGNITUDE_MAX`].
    Qty,
    "quantity",
    check_positive,
    MoneyError
);
from_untrusted_float!(Qty, "quantity");

impl Qty {
    /// What is left of this quantity once `filled` of it has filled: negative when more filled
    /// than this quantity (a stored order that breaks `orders_filled_bounded`). Exact: both are
    /// within [`MAGNITUDE_MAX`], far inside a decimal's range.
    pub fn remaining_after(self, filled: FilledQty) -> Decimal {
        self.0 - filled.0
    }
}

checked_decimal!(
    /// The quantity of an order filled so far: zero until the first fill, never negative, at
    /// most [`MAGNITUDE_MAX`].
    FilledQty,
    "filled quantity",
    check_nonnegative,
    MoneyError
);

impl FilledQty {
    /// Nothing filled.
    pub const ZERO: FilledQty = FilledQty(Decimal::ZERO);

    /// The filled quantity after a further fill of `qty`, refused beyond [`MAGNITUDE_MAX`].
    pub fn checked_add(self, qty: Qty) -> Result<FilledQty, MoneyError> {
        let sum = self.0.checked_add(qty.0).ok_or(MoneyError::TooLarge {
            what: "filled quantity",
            value: MAGNITUDE_MAX,
        })?;
        FilledQty::new(sum)
    }
}

checked_decimal!(
    /// An amount of a capital row or the ledger's journal: signed, within
    /// [`CAPITAL_MAX`](crate::ledger::CAPITAL_MAX) and at most
    /// [`AMOUNT_SCALE`](crate::ledger::AMOUNT_SCALE) decimal places, so that it is exactly what
    /// `NUMERIC(30, 8)` on PostgreSQL and 64-bit units on SQLite hold, and four of them add up
    /// inside a 64-bit integer of units. Its checks and errors are the ledger's.
    CapitalAmount,
    "capital amount",
    ledger::check_amount,
    LedgerError
);

impl CapitalAmount {
    /// Zero.
    pub const ZERO: CapitalAmount = CapitalAmount(Decimal::ZERO);

    /// [`CapitalAmount::new`], naming in a refusal what the amount is (a capital column).
    pub fn named(what: &'static str, value: Decimal) -> Result<Self, LedgerError> {
        ledger::check_amount(what, value).map(Self)
    }
}

impl Default for CapitalAmount {
    fn default() -> Self {
        CapitalAmount::ZERO
    }
}

checked_decimal!(
    /// Capital an order holds: zero or positive, with the bounds of a [`CapitalAmount`].
    Reservation,
    "reservation",
    ledger::check_nonnegative,
    LedgerError
);

impl Reservation {
    /// Nothing reserved.
    pub const ZERO: Reservation = Reservation(Decimal::ZERO);

    /// What is left after `released` of it is released, refused below zero as
    /// [`LedgerError::NegativeReservation`] of `what`.
    pub fn release(self, what: &'static str, released: Decimal) -> Result<Self, LedgerError> {
        let value = self
            .0
            .checked_sub(released)
            .ok_or(LedgerError::ArithmeticOverflow { what })?;
        if value < Decimal::ZERO {
            return Err(LedgerError::NegativeReservation { what, value });
        }
        ledger::check_nonnegative(what, value).map(Self)
    }
}

/// An amount of quote currency (USDT for USDⓈ-M futures). Signed: PnL and fees can be negative.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct Amount(Decimal);

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(Decimal::ZERO);

    /// Checks that `value` is within [`MAGNITUDE_MAX`].
    pub fn new(value: Decimal) -> Result<Self, MoneyError> {
        check_magnitude("amount", value).map(Self)
    }

    /// Checks that `value` is positive and within [`MAGNITUDE_MAX`].
    pub fn positive(value: Decimal) -> Result<Self, MoneyError> {
        check_positive("amount", value).map(Self)
    }

    /// The decimal inside.
    pub const fn get(self) -> Decimal {
        self.0
    }

    /// The notional value of `qty` at `price`.
    pub fn notional(price: Price, qty: Qty) -> Result<Self, MoneyError> {
        // Within MAGNITUDE_MAX both, the product cannot overflow; it is checked all the same,
        // so that no bound elsewhere is needed for this to be panic-free.
        let notional = (price.get().checked_mul(qty.get())).ok_or(MoneyError::TooLarge {
            what: "notional",
            value: MAGNITUDE_MAX,
        })?;
        Self::new(notional)
    }
}

impl TryFrom<Decimal> for Amount {
    type Error = MoneyError;
    fn try_from(value: Decimal) -> Result<Self, MoneyError> {
        Self::new(value)
    }
}

impl From<Amount> for Decimal {
    fn from(value: Amount) -> Decimal {
        value.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Rounds `value` down to a whole multiple of `step` (quantities: never more than asked for).
///
/// # Panics
///
/// When `step` is not positive or `value / step` is beyond the range of a decimal; use
/// [`checked_round_down_to_step`] for a step the exchange supplied.
pub fn round_down_to_step(value: Decimal, step: Decimal) -> Decimal {
    assert!(step > Decimal::ZERO, "a step size is positive");
    checked_round_down_to_step(value, step).expect("value / step is within a decimal's range")
}

/// Rounds `value` to the nearest multiple of `tick` (prices).
///
/// # Panics
///
/// When `tick` is not positive or `value / tick` is beyond the range of a decimal; use
/// [`checked_round_to_tick`] for a tick the exchange supplied.
pub fn round_to_tick(value: Decimal, tick: Decimal) -> Decimal {
    assert!(tick > Decimal::ZERO, "a tick size is positive");
    checked_round_to_tick(value, tick).expect("value / tick is within a decimal's range")
}

/// [`round_down_to_step`], or `None` when `step` is not positive or the rounding leaves the
/// range of a decimal (a step far smaller than the value).
pub fn checked_round_down_to_step(value: Decimal, step: Decimal) -> Option<Decimal> {
    if step <= Decimal::ZERO {
        return None;
    }
    let down = value.checked_div(step)?.floor().checked_mul(step)?;
    // The quotient is rounded to 28 digits, and may round up to a whole number: step back.
    if down > value {
        down.checked_sub(step)
    } else {
        Some(down)
    }
}

/// [`round_to_tick`], or `None` when `tick` is not positive or the rounding leaves the range of
/// a decimal (a tick far smaller than the value).
pub fn checked_round_to_tick(value: Decimal, tick: Decimal) -> Option<Decimal> {
    if tick <= Decimal::ZERO {
        return None;
    }
    value.checked_div(tick)?.round().checked_mul(tick)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use rust_decimal_macros::dec;

    #[test]
    fn untrusted_floats_are_refused_with_a_reason() {
        assert_eq!(
            Price::from_f64(f64::NAN),
            Err(MoneyError::NotFinite { what: "price" })
        );
        assert!(matches!(
            Qty::from_f64(f64::INFINITY),
            Err(MoneyError::NotFinite { .. })
        ));
        assert!(matches!(
            Qty::from_f64(-1.0),
            Err(MoneyError::NotPositive { .. })
        ));
        assert!(matches!(
            Qty::from_f64(0.0),
            Err(MoneyError::NotPositive { .. })
        ));
        assert!(matches!(
            Price::from_f64(1e300),
            Err(MoneyError::TooLarge { .. })
        ));
        assert!(matches!(
            Price::from_f64(1e13),
            Err(MoneyError::TooLarge { .. })
        ));
        assert_eq!(Price::from_f64(101.25).unwrap().get(), dec!(101.25));
    }

    #[test]
    fn magnitude_limit_is_a_trillion() {
        assert_eq!(MAGNITUDE_MAX, dec!(1_000_000_000_000));
    }

    #[test]
    fn rounding_follows_exchange_filters() {
        assert_eq!(round_down_to_step(dec!(0.0129), dec!(0.001)), dec!(0.012));
        assert_eq!(round_to_tick(dec!(100.26), dec!(0.1)), dec!(100.3));
    }

    #[test]
    fn rounding_to_an_unusable_step_is_none_not_a_panic() {
        let tiny = Decimal::new(1, 28);
        assert_eq!(checked_round_down_to_step(MAGNITUDE_MAX, tiny), None);
        assert_eq!(checked_round_to_tick(MAGNITUDE_MAX, tiny), None);
        assert_eq!(checked_round_down_to_step(dec!(1), Decimal::ZERO), None);
        assert_eq!(checked_round_to_tick(dec!(1), dec!(-0.1)), None);
        assert_eq!(
            checked_round_down_to_step(dec!(0.0129), dec!(0.001)),
            Some(dec!(0.012))
        );
    }

    #[test]
    fn a_filled_quantity_may_be_zero_never_negative_or_beyond_the_limit() {
        assert_eq!(FilledQty::new(dec!(0)), Ok(FilledQty::ZERO));
        assert_eq!(
            FilledQty::new(dec!(-0.1)),
            Err(MoneyError::Negative {
                what: "filled quantity",
                value: dec!(-0.1)
            })
        );
        assert!(matches!(
            FilledQty::new(MAGNITUDE_MAX + dec!(1)),
            Err(MoneyError::TooLarge { .. })
        ));
        let half = FilledQty::ZERO
            .checked_add(Qty::new(dec!(0.5)).unwrap())
            .unwrap();
        assert_eq!(half.get(), dec!(0.5));
        let full = FilledQty::new(MAGNITUDE_MAX).unwrap();
        assert!(matches!(
            full.checked_add(Qty::new(dec!(1)).unwrap()),
            Err(MoneyError::TooLarge { .. })
        ));
        let qty = Qty::new(dec!(2)).unwrap();
        assert_eq!(qty.remaining_after(half), dec!(1.5));
        assert_eq!(qty.remaining_after(full), dec!(2) - MAGNITUDE_MAX);
    }

    #[test]
    fn capital_amounts_keep_the_ledger_range_and_scale() {
        use crate::ledger::CAPITAL_MAX;
        assert_eq!(
            CapitalAmount::new(-CAPITAL_MAX).unwrap().get(),
            -CAPITAL_MAX
        );
        assert_eq!(
            CapitalAmount::named("allocated", CAPITAL_MAX + dec!(0.00000001)),
            Err(LedgerError::OutOfRange {
                what: "allocated",
                value: CAPITAL_MAX + dec!(0.00000001)
            })
        );
        assert!(matches!(
            CapitalAmount::new(dec!(0.000000001)),
            Err(LedgerError::TooPrecise { .. })
        ));
        assert_eq!(CapitalAmount::default(), CapitalAmount::ZERO);
        assert!(matches!(
            Reservation::new(dec!(-0.00000001)),
            Err(LedgerError::Negative { .. })
        ));
        assert!(matches!(
            Reservation::new(CAPITAL_MAX + dec!(1)),
            Err(LedgerError::OutOfRange { .. })
        ));
    }

    #[test]
    fn a_reservation_is_released_down_to_zero_and_no_further() {
        let reserved = Reservation::new(dec!(10)).unwrap();
        let left = reserved.release("reserved_remaining", dec!(4)).unwrap();
        assert_eq!(left.get(), dec!(6));
        assert_eq!(
            left.release("reserved_remaining", dec!(6)),
            Ok(Reservation::ZERO)
        );
        assert_eq!(
            left.release("reserved_remaining", dec!(6.00000001)),
            Err(LedgerError::NegativeReservation {
                what: "reserved_remaining",
                value: dec!(-0.00000001)
            })
        );
        assert_eq!(
            left.release("reserved_remaining", Decimal::MIN),
            Err(LedgerError::ArithmeticOverflow {
                what: "reserved_remaining"
            })
        );
    }

    #[test]
    fn a_checked_type_reads_and_writes_the_json_of_its_decimal() {
        let price = Price::new(dec!(101.250)).unwrap();
        assert_eq!(serde_json::to_string(&price).unwrap(), r#""101.250""#);
        assert_eq!(
            serde_json::from_str::<Price>(r#""101.250""#).unwrap(),
            price
        );
        let refused = serde_json::from_str::<Qty>(r#""-1""#).unwrap_err();
        assert!(refused.to_string().contains("quantity must be positive"));
        let refused = serde_json::from_str::<CapitalAmount>(r#""20000000000""#).unwrap_err();
        assert!(refused.to_string().contains("beyond the limit"));
    }

    /// Decimals of every sign and scale, with the limits of the checked types and their
    /// neighbours among them.
    fn any_decimal() -> impl Strategy<Value = Decimal> {
        use crate::ledger::CAPITAL_MAX;
        let step = Decimal::new(1, 8);
        prop_oneof![
            4 => (any::<i64>(), 0..=28_u32).prop_map(|(units, scale)| Decimal::new(units, scale)),
            2 => (-1_000_000_i64..1_000_000, 0..=10_u32)
                .prop_map(|(units, scale)| Decimal::new(units, scale)),
            1 => prop_oneof![
                Just(Decimal::ZERO),
                Just(MAGNITUDE_MAX),
                Just(MAGNITUDE_MAX + step),
                Just(-MAGNITUDE_MAX),
                Just(CAPITAL_MAX),
                Just(CAPITAL_MAX + step),
                Just(-CAPITAL_MAX - step),
                Just(Decimal::MAX),
                Just(Decimal::MIN),
            ],
        ]
    }

    /// `T::new(value)` accepts exactly when `rule` does, keeps the decimal as it was given
    /// (value and scale), and serializes as the decimal does; JSON is read back with the same
    /// check.
    fn checks_and_keeps<T>(value: Decimal, accepted: bool) -> Result<(), TestCaseError>
    where
        T: TryFrom<Decimal> + Into<Decimal> + Serialize + serde::de::DeserializeOwned + Copy,
        <T as TryFrom<Decimal>>::Error: fmt::Debug,
    {
        let decimal_json = serde_json::to_string(&value).unwrap();
        let read = serde_json::from_str::<T>(&decimal_json);
        match T::try_from(value) {
            Ok(checked) => {
                prop_assert!(accepted, "{value} accepted");
                let inside: Decimal = checked.into();
                prop_assert_eq!(inside.to_string(), value.to_string());
                prop_assert_eq!(serde_json::to_string(&checked).unwrap(), decimal_json);
                prop_assert!(read.is_ok());
            }
            Err(_) => {
                prop_assert!(!accepted, "{value} refused");
                prop_assert!(read.is_err());
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn every_checked_type_accepts_exactly_its_range_and_keeps_its_json(value in any_decimal()) {
            use crate::ledger::{AMOUNT_SCALE, CAPITAL_MAX};
            let within = value.abs() <= MAGNITUDE_MAX;
            let in_ledger = value.abs() <= CAPITAL_MAX && value.normalize().scale() <= AMOUNT_SCALE;
            checks_and_keeps::<Price>(value, within && value > Decimal::ZERO)?;
            checks_and_keeps::<Qty>(value, within && value > Decimal::ZERO)?;
            checks_and_keeps::<FilledQty>(value, within && value >= Decimal::ZERO)?;
            checks_and_keeps::<Amount>(value, within)?;
            checks_and_keeps::<CapitalAmount>(value, in_ledger)?;
            checks_and_keeps::<Reservation>(value, in_ledger && value >= Decimal::ZERO)?;
        }

        #[test]
        fn a_filled_quantity_grows_by_exactly_the_fill_or_is_refused(
            filled in any_decimal(),
            qty in any_decimal(),
        ) {
            let (Ok(filled), Ok(qty)) = (FilledQty::new(filled), Qty::new(qty)) else {
                return Ok(());
            };
            let sum = filled.get() + qty.get();
            match filled.checked_add(qty) {
                Ok(after) => prop_assert_eq!(after.get(), sum),
                Err(_) => prop_assert!(sum > MAGNITUDE_MAX),
            }
        }
    }

    #[test]
    fn notional_of_the_largest_price_and_quantity_is_refused_not_a_panic() {
        let price = Price::new(MAGNITUDE_MAX).unwrap();
        let qty = Qty::new(MAGNITUDE_MAX).unwrap();
        assert!(matches!(
            Amount::notional(price, qty),
            Err(MoneyError::TooLarge { .. })
        ));
    }
}
