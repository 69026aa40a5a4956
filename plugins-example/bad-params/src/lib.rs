//! A strategy whose declared parameters are malformed: `fast` defaults to 0 but allows only
//! 1 to 10. Keel's tests load it to check that the host refuses the declaration at load, naming
//! the parameter, instead of refusing every configuration later.

use keel_guest::{AccountView, Candle, Config, Intent, Param, Strategy};

struct BadParams;

impl Strategy for BadParams {
    const PARAMS: &'static [Param] =
        &[Param::int("fast", 0, "A default outside its own range.").range(1.0, 10.0)];

    fn init(_config: &Config) -> Result<Self, String> {
        Ok(BadParams)
    }

    fn on_candle(&mut self, _candle: &Candle, _account: &AccountView) -> Vec<Intent> {
        Vec::new()
    }
}

keel_guest::export_strategy!(BadParams);
