//! The cheapest possible strategy: every call returns nothing at once. `keel bench plugin`
//! calls it with the same arguments as `sma-cross` to measure the floor of a sandboxed call.

use keel_guest::{AccountView, Candle, Config, Intent, Strategy};

struct Boundary;

impl Strategy for Boundary {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Boundary)
    }

    fn on_candle(&mut self, _candle: &Candle, _account: &AccountView) -> Vec<Intent> {
        Vec::new()
    }
}

keel_guest::export_strategy!(Boundary);
