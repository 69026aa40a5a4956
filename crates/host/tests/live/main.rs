//! The live feed: WebSocket partitioning under load over real sockets, and the dashboard in a
//! real headless Chromium against a real `keel demo`.

mod ws;
