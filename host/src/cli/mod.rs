//! The `keel` subcommands' implementations.

pub mod migrate;
