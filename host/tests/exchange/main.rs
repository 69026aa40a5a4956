//! Exchange integration tests.
