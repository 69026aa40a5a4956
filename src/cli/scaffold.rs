//! `keel plugin new NAME`: a plugin crate that builds into a component and passes
//! `keel plugin check` as it stands.
//!
//! The crate is self-contained: it carries its own copy of the guest SDK (`keel-guest`) and of
//! the WIT contract, both taken from this build of Keel, so it builds anywhere with only
//! `wit-bindgen` from crates.io.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The guest SDK's source, as this Keel was built with it.
const GUEST_LIB: &str = include_str!("../../plugins-example/keel-guest/src/lib.rs");
/// The WIT contract plugins are built against.
const STRATEGY_WIT: &str = include_str!("../../wit/strategy.wit");
/// Where the SDK looks for the contract in the Keel tree, and where it is in a new crate.
const WIT_PATH_IN_TREE: &str = "path: \"../../wit\"";
const WIT_PATH_IN_CRATE: &str = "path: \"../wit\"";
/// Longest plugin name accepted.
const NAME_CHARS_MAX: usize = 64;

/// Creates the crate `NAME` inside `parent` and returns its directory.
pub fn new_plugin(name: &str, parent: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let root = parent.join(name);
    if root.exists() {
        bail!(
            "{} already exists: choose another name or directory",
            root.display()
        );
    }
    if !GUEST_LIB.contains(WIT_PATH_IN_TREE) {
        bail!("the guest SDK no longer reads its contract from {WIT_PATH_IN_TREE}");
    }
    let files = [
        ("Cargo.toml", manifest(name)),
        (".gitignore", "/target\n".to_owned()),
        ("src/lib.rs", STRATEGY_TEMPLATE.to_owned()),
        ("keel-guest/Cargo.toml", GUEST_MANIFEST.to_owned()),
        (
            "keel-guest/src/lib.rs",
            GUEST_LIB.replace(WIT_PATH_IN_TREE, WIT_PATH_IN_CRATE),
        ),
        ("wit/strategy.wit", STRATEGY_WIT.to_owned()),
    ];
    // Written into a scratch directory first, then renamed: nothing half-written is left behind.
    let scratch = tempfile::Builder::new()
        .prefix(".keel-plugin-new-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    for (relative, text) in files {
        let path = scratch.path().join(relative);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let scratch = scratch.keep();
    std::fs::rename(&scratch, &root).with_context(|| format!("creating {}", root.display()))?;
    Ok(root)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !starts_well || !rest_ok || name.len() > NAME_CHARS_MAX || name.ends_with('-') {
        bail!(
            "plugin name {name:?}: use lowercase letters, digits and '-', starting with a letter, \
             at most {NAME_CHARS_MAX} characters"
        );
    }
    if name == "keel-guest" {
        bail!("plugin name {name:?} is the guest SDK's own name");
    }
    Ok(())
}

fn manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

# Build: cargo build --target wasm32-wasip2 --release
# Check: keel plugin check target/wasm32-wasip2/release/{file}.wasm
[lib]
crate-type = ["cdylib"]

[dependencies]
keel-guest = {{ path = "keel-guest" }}

[workspace]
members = [".", "keel-guest"]

[workspace.dependencies]
wit-bindgen = {{ version = "0.57", default-features = false, features = ["macros", "realloc"] }}

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true
"#,
        file = name.replace('-', "_")
    )
}

const GUEST_MANIFEST: &str = r#"[package]
name = "keel-guest"
description = "Guest SDK for Keel strategy plugins: implement a trait, call one macro"
version = "0.1.0"
edition = "2024"

[dependencies]
wit-bindgen.workspace = true
"#;

const STRATEGY_TEMPLATE: &str = r#"//! A Keel strategy plugin: momentum over a few closes.
//!
//! Enters long when the close is above the close `lookback` candles ago and leaves when it falls
//! below it. Its parameters are declared once, in `PARAMS`: `keel plugin check` shows them, and
//! Keel refuses an unknown key or a value out of range before `init` runs.

use std::collections::{BTreeMap, VecDeque};

use keel_guest::{AccountView, Candle, Config, Intent, Param, PositionSide, Strategy, SymbolId};

/// Most closes kept per instrument, and most instruments tracked: bounds on memory.
const LOOKBACK_MAX: usize = 10_000;
const SYMBOLS_MAX: usize = 256;

struct Momentum {
    lookback: usize,
    size_fraction: f64,
    closes: BTreeMap<SymbolId, VecDeque<f64>>,
}

impl Strategy for Momentum {
    const PARAMS: &'static [Param] = &[
        Param::int("lookback", 20, "Closes compared, in candles.")
            .range(1.0, LOOKBACK_MAX as f64),
        Param::float("size_fraction", 0.1, "Fraction of free capital committed per entry.")
            .range(0.001, 1.0),
    ];

    fn init(config: &Config) -> Result<Self, String> {
        // Keel has checked each value against PARAMS and filled in the defaults.
        Ok(Momentum {
            lookback: config.parse("lookback")?,
            size_fraction: config.parse("size_fraction")?,
            closes: BTreeMap::new(),
        })
    }

    fn on_candle(&mut self, candle: &Candle, _account: &AccountView) -> Vec<Intent> {
        if !self.closes.contains_key(&candle.symbol) && self.closes.len() >= SYMBOLS_MAX {
            return Vec::new();
        }
        let closes = self.closes.entry(candle.symbol).or_default();
        closes.push_back(candle.close);
        if closes.len() <= self.lookback {
            return Vec::new();
        }
        let past = closes.pop_front().unwrap_or(candle.close);
        let holding = keel_guest::position(candle.symbol).is_some();
        if candle.close > past && !holding {
            let fraction = self.size_fraction;
            vec![keel_guest::enter_market(candle.symbol, PositionSide::Long, fraction, "momentum")]
        } else if candle.close < past && holding {
            vec![keel_guest::exit_market(candle.symbol, "momentum-exit")]
        } else {
            Vec::new()
        }
    }
}

keel_guest::export_strategy!(Momentum);
"#;
