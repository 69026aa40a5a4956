//! The live feed: WebSocket partitioning under load over real sockets, two tenants trading on
//! one shared account, the operational endpoints' tenant data, and the dashboard in a
//! real headless Chromium against a real `keel demo`.

mod tenants;
mod ws;
