//! Exchange adapters: the in-process paper exchange, the Binance USDⓈ-M Futures adapter, and
//! the Binance-compatible simulator server used to test that adapter.

pub mod binance;
pub mod codes;
pub mod paper;
