//! `keel backtest`: the whole kernel path over candle files, its report, and its command line.

mod common;
mod files;
mod peer;
mod python;
mod reports;
mod runs;
