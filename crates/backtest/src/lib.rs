//! Backtests: the whole kernel path over recorded candles, with paper fills and a virtual clock.

pub mod candles;
pub mod cli;
pub mod plot;
pub mod report;
pub mod run;
pub mod sweep;
pub mod synthetic;
