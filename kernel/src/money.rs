//! Money and quantities as decimals. Nothing inside the kernel holds money in a float.

use std::fmt;

use rust_decimal::Decimal;
use rust_decimal::prelude::FromPrimitive;
use serde::{Deserialize, Serialize};

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

macro_rules! positive_decimal {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "Decimal", into = "Decimal")]
        pub struct $name(Decimal);

        impl $name {
            /// Checks that `value` is positive and within [`MAGNITUDE_MAX`].
            pub fn new(value: Decimal) -> Result<Self, MoneyError> {
                check_positive($what, value).map(Self)
            }

            /// Converts an untrusted float, refusing NaN, infinities, zero, negatives and excess.
            pub fn from_f64(value: f64) -> Result<Self, MoneyError> {
                Self::new(decimal_from_f64($what, value)?)
            }

            /// The decimal inside.
            pub const fn get(self) -> Decimal {
                self.0
            }
        }

        impl TryFrom<Decimal> for $name {
            type Error = MoneyError;
            fn try_from(value: Decimal) -> Result<Self, MoneyError> {
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

positive_decimal!(
    /// A price in quote currency per unit of base, always positive.
    Price,
    "price"
);
positive_decimal!(
    /// A quantity of base currency, always positive.
    Qty,
    "quantity"
);

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
    fn notional_of_the_largest_price_and_quantity_is_refused_not_a_panic() {
        let price = Price::new(MAGNITUDE_MAX).unwrap();
        let qty = Qty::new(MAGNITUDE_MAX).unwrap();
        assert!(matches!(
            Amount::notional(price, qty),
            Err(MoneyError::TooLarge { .. })
        ));
    }
}
