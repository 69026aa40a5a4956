//! The trading engine end to end: a native strategy, the paper exchange and a real SQLite store.

mod harness;
mod metrics;
mod path;
mod recovery;
mod reversal;
mod shared_account;
mod warm_up;
