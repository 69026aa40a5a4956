//! Guest SDK for Keel strategy plugins.
//!
//! A strategy is a type implementing [`Strategy`]; [`export_strategy!`] turns it into a
//! component of the `keel:strategy@0.1.0` world. Build with
//! `cargo build --target wasm32-wasip2 --release` and check the result with
//! `keel plugin check target/wasm32-wasip2/release/<name>.wasm`.
//!
//! ```ignore
//! use keel_guest::{AccountView, Candle, Config, Intent, Strategy};
//!
//! struct Quiet;
//!
//! impl Strategy for Quiet {
//!     fn init(_config: &Config) -> Result<Self, String> {
//!         Ok(Quiet)
//!     }
//!     fn on_candle(&mut self, _candle: &Candle, _account: &AccountView) -> Vec<Intent> {
//!         Vec::new()
//!     }
//! }
//!
//! keel_guest::export_strategy!(Quiet);
//! ```

/// The raw bindings generated from `wit/strategy.wit`. Most strategies never need them.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "keel:strategy/strategy",
        pub_export_macro: true,
        default_bindings_module: "keel_guest::bindings",
    });
}

pub use bindings::keel::strategy::account;
pub use bindings::keel::strategy::clock;
pub use bindings::keel::strategy::log::{self, Level};
pub use bindings::keel::strategy::types::{
    AccountView, Candle, EntryRequest, ExitRequest, Fill, Intent, OpenOrder, Position,
    PositionSide, Price, Size, SymbolId,
};

/// A strategy: configured once by [`Strategy::init`], then called for each event of its
/// profile. Each call returns the requests the strategy makes; the kernel validates them.
pub trait Strategy: Sized + 'static {
    /// Builds the strategy from the profile's settings; an `Err` refuses the configuration.
    fn init(config: &Config) -> Result<Self, String>;

    /// A candle closed for one of the profile's instruments.
    fn on_candle(&mut self, candle: &Candle, account: &AccountView) -> Vec<Intent>;

    /// One of the profile's orders filled. Does nothing unless overridden.
    fn on_fill(&mut self, _fill: &Fill, _account: &AccountView) -> Vec<Intent> {
        Vec::new()
    }

    /// A timer set with [`Intent::SetTimer`] came due. Does nothing unless overridden.
    fn on_timer(&mut self, _now_ms: i64, _account: &AccountView) -> Vec<Intent> {
        Vec::new()
    }
}

/// The profile's settings, as key/value text pairs, with typed readers.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    /// Wraps the pairs handed to `init`.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Config { pairs }
    }

    /// All pairs, in the order given.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The text of `key`, if set (the last occurrence wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` parsed as `T`, or `default` when the key is absent; an error names the key.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.get(key) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse()
                .map_err(|_| format!("config key `{key}`: cannot parse {text:?}")),
        }
    }
}

/// Writes one line to the strategy's log.
pub fn log(level: Level, message: &str) {
    log::log(level, message);
}

/// The kernel's clock, milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    clock::now_ms()
}

/// The open position on `symbol`, if any.
pub fn position(symbol: SymbolId) -> Option<Position> {
    account::position_of(symbol)
}

/// A market entry for a fraction of free capital, the most common request.
pub fn enter_market(symbol: SymbolId, side: PositionSide, fraction: f64, tag: &str) -> Intent {
    Intent::Entry(EntryRequest {
        symbol,
        side,
        size: Size::FreeCapitalFraction(fraction),
        price: Price::Market,
        stop_loss: None,
        take_profit: None,
        tag: tag.to_string(),
    })
}

/// A market exit of the whole position on `symbol`.
pub fn exit_market(symbol: SymbolId, tag: &str) -> Intent {
    Intent::Exit(ExitRequest {
        symbol,
        fraction: 1.0,
        price: Price::Market,
        tag: tag.to_string(),
    })
}

/// Exports a [`Strategy`] implementation as the plugin's component exports. Use once per
/// plugin crate, at the top level.
#[macro_export]
macro_rules! export_strategy {
    ($strategy:ty) => {
        struct KeelGuestExport;

        thread_local! {
            static KEEL_GUEST_STATE: ::core::cell::RefCell<::core::option::Option<$strategy>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }

        fn keel_guest_with<R: Default>(f: impl FnOnce(&mut $strategy) -> R) -> R {
            KEEL_GUEST_STATE.with(|cell| match cell.borrow_mut().as_mut() {
                Some(strategy) => f(strategy),
                // The host never calls before a successful init; stay quiet if it ever did.
                None => R::default(),
            })
        }

        impl $crate::bindings::Guest for KeelGuestExport {
            fn init(config: Vec<(String, String)>) -> Result<(), String> {
                let strategy = <$strategy as $crate::Strategy>::init(&$crate::Config::new(config))?;
                KEEL_GUEST_STATE.with(|cell| *cell.borrow_mut() = Some(strategy));
                Ok(())
            }

            fn on_candle(
                candle: $crate::Candle,
                account: $crate::AccountView,
            ) -> Vec<$crate::Intent> {
                keel_guest_with(|s| $crate::Strategy::on_candle(s, &candle, &account))
            }

            fn on_fill(fill: $crate::Fill, account: $crate::AccountView) -> Vec<$crate::Intent> {
                keel_guest_with(|s| $crate::Strategy::on_fill(s, &fill, &account))
            }

            fn on_timer(now_ms: i64, account: $crate::AccountView) -> Vec<$crate::Intent> {
                keel_guest_with(|s| $crate::Strategy::on_timer(s, now_ms, &account))
            }
        }

        $crate::bindings::export!(KeelGuestExport with_types_in $crate::bindings);
    };
}
