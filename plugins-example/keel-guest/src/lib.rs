//! Guest SDK for Keel strategy plugins.
//!
//! A strategy is a type implementing [`Strategy`]; [`export_strategy!`] turns it into a
//! component of the `keel:strategy@0.1.1` world `strategy-with-params`. Build with
//! `cargo build --target wasm32-wasip2 --release` and check the result with
//! `keel plugin check target/wasm32-wasip2/release/<name>.wasm`.
//!
//! The parameters are declared in one place, [`Strategy::PARAMS`]: Keel shows them, refuses a
//! configuration that does not fit them before `init`, and [`Config`] reads them (the value
//! given, or the declared default).
//!
//! ```ignore
//! use keel_guest::{AccountView, Candle, Config, Intent, Param, Strategy};
//!
//! struct Quiet {
//!     lookback: usize,
//! }
//!
//! impl Strategy for Quiet {
//!     const PARAMS: &'static [Param] = &[
//!         Param::int("lookback", 20, "Closes compared, in candles.").range(1.0, 10_000.0),
//!     ];
//!
//!     fn init(config: &Config) -> Result<Self, String> {
//!         Ok(Quiet { lookback: config.parse("lookback")? })
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
        world: "keel:strategy/strategy-with-params",
        pub_export_macro: true,
        default_bindings_module: "keel_guest::bindings",
    });
}

pub use bindings::keel::strategy::account;
pub use bindings::keel::strategy::clock;
pub use bindings::keel::strategy::log::{self, Level};
pub use bindings::keel::strategy::types::{
    AccountView, Candle, EntryRequest, ExitRequest, Fill, Intent, OpenOrder, ParamSpec,
    ParamValue, Position, PositionSide, Price, Size, SymbolId,
};

/// A strategy: configured once by [`Strategy::init`], then called for each event of its
/// profile. Each call returns the requests the strategy makes; the kernel validates them.
pub trait Strategy: Sized + 'static {
    /// The parameters `init` reads: Keel refuses any other key, a value of the wrong type and
    /// a value out of range before `init`, and hands `init` every parameter (the default for
    /// those not set). None unless overridden: then every key is refused.
    const PARAMS: &'static [Param] = &[];

    /// Builds the strategy from the profile's settings; an `Err` refuses the configuration
    /// (for what [`Strategy::PARAMS`] cannot say, such as `fast` below `slow`).
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

/// One declared parameter: name, type and default, range or choices, and a description.
/// Built in a `const` with [`Param::int`], [`Param::float`], [`Param::boolean`] or
/// [`Param::text`], then [`Param::range`], [`Param::min`], [`Param::max`] or
/// [`Param::choices`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Param {
    /// The configuration key: `[a-z][a-z0-9_-]*`, at most 64 bytes.
    pub name: &'static str,
    /// The type, and the value used when the configuration does not set the parameter.
    pub default: ParamDefault,
    /// The smallest value allowed (numbers only), inclusive.
    pub min: Option<f64>,
    /// The largest value allowed (numbers only), inclusive.
    pub max: Option<f64>,
    /// The values a text parameter may take (any text when empty).
    pub choices: &'static [&'static str],
    /// What the parameter does, in a sentence.
    pub description: &'static str,
}

/// A parameter's default; its case is the parameter's type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamDefault {
    /// A whole number.
    Int(i64),
    /// A finite decimal number.
    Float(f64),
    /// `true` or `false`.
    Boolean(bool),
    /// Text.
    Text(&'static str),
}

impl Param {
    const fn new(name: &'static str, default: ParamDefault, description: &'static str) -> Self {
        Param {
            name,
            default,
            min: None,
            max: None,
            choices: &[],
            description,
        }
    }

    /// A whole-number parameter.
    pub const fn int(name: &'static str, default: i64, description: &'static str) -> Self {
        Param::new(name, ParamDefault::Int(default), description)
    }

    /// A decimal-number parameter.
    pub const fn float(name: &'static str, default: f64, description: &'static str) -> Self {
        Param::new(name, ParamDefault::Float(default), description)
    }

    /// A `true`/`false` parameter.
    pub const fn boolean(name: &'static str, default: bool, description: &'static str) -> Self {
        Param::new(name, ParamDefault::Boolean(default), description)
    }

    /// A text parameter.
    pub const fn text(
        name: &'static str,
        default: &'static str,
        description: &'static str,
    ) -> Self {
        Param::new(name, ParamDefault::Text(default), description)
    }

    /// Allows only numbers in `[min, max]`.
    pub const fn range(self, min: f64, max: f64) -> Self {
        self.min(min).max(max)
    }

    /// Allows only numbers at or above `min`.
    pub const fn min(mut self, min: f64) -> Self {
        self.min = Some(min);
        self
    }

    /// Allows only numbers at or below `max`.
    pub const fn max(mut self, max: f64) -> Self {
        self.max = Some(max);
        self
    }

    /// Allows only these texts.
    pub const fn choices(mut self, choices: &'static [&'static str]) -> Self {
        self.choices = choices;
        self
    }

    /// The default as configuration text.
    pub fn default_text(&self) -> String {
        match self.default {
            ParamDefault::Int(value) => value.to_string(),
            ParamDefault::Float(value) => value.to_string(),
            ParamDefault::Boolean(value) => value.to_string(),
            ParamDefault::Text(value) => value.to_string(),
        }
    }

    /// The declaration as the contract carries it (what the `params` export returns).
    pub fn spec(&self) -> ParamSpec {
        ParamSpec {
            name: self.name.to_string(),
            default: match self.default {
                ParamDefault::Int(value) => ParamValue::Int(value),
                ParamDefault::Float(value) => ParamValue::Float(value),
                ParamDefault::Boolean(value) => ParamValue::Boolean(value),
                ParamDefault::Text(value) => ParamValue::Text(value.to_string()),
            },
            min: self.min,
            max: self.max,
            choices: self.choices.iter().map(|c| c.to_string()).collect(),
            description: self.description.to_string(),
        }
    }
}

/// The profile's settings, as key/value text pairs, with typed readers of the declared
/// parameters.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pairs: Vec<(String, String)>,
    params: &'static [Param],
}

impl Config {
    /// Wraps the pairs handed to `init`, with the parameters the strategy declares.
    pub fn new(pairs: Vec<(String, String)>, params: &'static [Param]) -> Self {
        Config { pairs, params }
    }

    /// The declared parameter `name`'s value: the text given, or its default. An error when
    /// `name` is not declared in [`Strategy::PARAMS`].
    pub fn text(&self, name: &str) -> Result<String, String> {
        if let Some(text) = self.get(name) {
            return Ok(text.to_string());
        }
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(Param::default_text)
            .ok_or_else(|| format!("parameter `{name}` is not declared in the strategy's PARAMS"))
    }

    /// The declared parameter `name` parsed as `T` (given, or its default); the error names
    /// the parameter.
    pub fn parse<T: std::str::FromStr>(&self, name: &str) -> Result<T, String> {
        let text = self.text(name)?;
        text.trim()
            .parse()
            .map_err(|_| format!("parameter `{name}`: cannot parse {text:?}"))
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
            fn params() -> Vec<$crate::ParamSpec> {
                <$strategy as $crate::Strategy>::PARAMS
                    .iter()
                    .map($crate::Param::spec)
                    .collect()
            }

            fn init(config: Vec<(String, String)>) -> Result<(), String> {
                let params = <$strategy as $crate::Strategy>::PARAMS;
                let strategy =
                    <$strategy as $crate::Strategy>::init(&$crate::Config::new(config, params))?;
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
