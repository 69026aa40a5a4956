//! The last price of each symbol, from the closes of the candles the engine was fed.

use std::cell::Cell;

use crate::ids::Symbol;
use crate::money::Price;

/// Closes within this range convert to a [`Price`] without fail (positive after rounding to 12
/// places, below the magnitude limit of 10¹²): they are kept as floats and converted only when
/// a price is asked for, once, so a candle costs no decimal conversion.
const CLOSE_PLAUSIBLE_MIN: f64 = 1e-11;
const CLOSE_PLAUSIBLE_MAX: f64 = 1e11;

/// The last price of each symbol. Market data is not trusted: a close that is not a price (NaN,
/// infinite, zero, negative, too large) leaves the previous price in place.
#[derive(Debug, Default)]
pub(super) struct LastPrices {
    /// Keyed by the engine's own symbols, hashed with foldhash. A price asked for is kept in
    /// place of its close, so an order's several reads of it convert it once.
    closes: std::collections::HashMap<Symbol, Cell<LastPrice>, foldhash::fast::RandomState>,
}

#[derive(Debug, Clone, Copy)]
enum LastPrice {
    /// A close known to convert, not converted yet.
    Close(f64),
    /// A price: a close outside the plausible range converted when noted, or one converted
    /// when first asked for.
    Price(Price),
}

impl LastPrices {
    /// Notes the close of a candle of `symbol`.
    pub(super) fn note(&mut self, symbol: &Symbol, close: f64) {
        let last = if (CLOSE_PLAUSIBLE_MIN..=CLOSE_PLAUSIBLE_MAX).contains(&close) {
            LastPrice::Close(close)
        } else {
            match Price::from_f64(close) {
                Ok(price) => LastPrice::Price(price),
                Err(_) => return,
            }
        };
        match self.closes.get_mut(symbol) {
            Some(kept) => *kept.get_mut() = last,
            None => {
                self.closes.insert(symbol.clone(), Cell::new(last));
            }
        }
    }

    /// The last price of `symbol`, if a candle of it gave one.
    pub(super) fn get(&self, symbol: &Symbol) -> Option<Price> {
        let kept = self.closes.get(symbol)?;
        match kept.get() {
            LastPrice::Price(price) => Some(price),
            LastPrice::Close(close) => {
                let price = Price::from_f64(close);
                debug_assert!(price.is_ok(), "a plausible close {close} converts");
                let price = price.ok()?;
                kept.set(LastPrice::Price(price));
                Some(price)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_that_is_not_a_price_keeps_the_previous_price() {
        let symbol = Symbol::new("BTCUSDT").unwrap();
        let mut prices = LastPrices::default();
        assert_eq!(prices.get(&symbol), None);
        prices.note(&symbol, 101.25);
        for bad in [f64::NAN, f64::INFINITY, 0.0, -3.0, 1e13, 1e-14] {
            prices.note(&symbol, bad);
            assert_eq!(prices.get(&symbol), Price::from_f64(101.25).ok(), "{bad}");
        }
    }

    #[test]
    fn every_close_gives_the_price_a_direct_conversion_gives() {
        let symbol = Symbol::new("ETHUSDT").unwrap();
        let mut prices = LastPrices::default();
        let edges = [
            CLOSE_PLAUSIBLE_MIN,
            CLOSE_PLAUSIBLE_MAX,
            1e-12,
            4e-13,
            6e-13,
            999_999_999_999.9,
            0.1 + 0.2,
            65_000.123_456_789,
        ];
        for close in edges {
            let direct = Price::from_f64(close).ok();
            prices.note(&symbol, close);
            if let Some(direct) = direct {
                assert_eq!(prices.get(&symbol), Some(direct), "{close}");
            }
        }
    }
}
