//! Backtests: the whole kernel path over recorded candles, with paper fills and a virtual clock.

pub mod candles;
