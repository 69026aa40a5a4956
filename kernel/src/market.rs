//! Market data as the kernel receives it and hands it to strategies.

use serde::{Deserialize, Serialize};

use crate::ids::Symbol;

/// One closed candle (kline).
///
/// Market data is carried as `f64`: strategies compute in floats, and a candle is information,
/// not money. Every number a strategy sends back is checked and converted to a decimal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candle {
    /// The instrument.
    pub symbol: Symbol,
    /// Start of the candle's interval, milliseconds since the Unix epoch.
    pub open_time_ms: i64,
    /// End of the candle's interval (exclusive), milliseconds since the Unix epoch.
    pub close_time_ms: i64,
    /// First trade price of the interval.
    pub open: f64,
    /// Highest trade price of the interval.
    pub high: f64,
    /// Lowest trade price of the interval.
    pub low: f64,
    /// Last trade price of the interval.
    pub close: f64,
    /// Base volume traded in the interval.
    pub volume: f64,
}

/// The direction of an order or a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Side {
    /// Buy to open a long, or to close a short.
    Buy,
    /// Sell to open a short, or to close a long.
    Sell,
}

impl Side {
    /// The other side: the side that closes a position opened on this one.
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}
