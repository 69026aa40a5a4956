//! Exchange integration tests: the paper engine's fill rules, and the Binance adapter against a
//! real `keel exchange-sim` server, with and without injected faults.

mod algo;
mod binance;
mod clients;
mod orders;
mod paper;
mod streams;
