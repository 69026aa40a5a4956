//! Checking a plugin as the host loads it (`keel plugin check`, the upload API), and the
//! `KEY=VALUE` configuration a plugin's `init` takes.

use std::sync::Arc;

use keel_kernel::engine::SystemClock;
use keel_kernel::ids::ProfileId;

use crate::{CompileCancel, InstanceSetup, PluginEngine, PluginVersion};

/// What checking a plugin found: the loaded version and whether `init` accepted the config.
pub struct Checked {
    /// The validated, compiled plugin version.
    pub version: PluginVersion,
    /// `init`'s answer: the fault when it refused.
    pub init: Result<(), String>,
}

/// Checks plugin bytes exactly as the host loads them: validation and compilation (with the
/// declared parameters read), then `config` checked against those parameters and an instance
/// whose `init` runs with it. `Err` is the reason the bytes were refused at load; `name` is
/// what errors call the plugin.
pub fn check_bytes(
    engine: &PluginEngine,
    bytes: &[u8],
    name: &str,
    config: Vec<(String, String)>,
    cancel: &CompileCancel,
) -> Result<Checked, String> {
    let version = engine
        .load_cancellable(bytes, cancel)
        .map_err(|error| format!("{error:#}"))?;
    let setup = InstanceSetup::new(ProfileId::new_random(), Arc::new(SystemClock))
        .config(config)
        .name(name);
    let init = engine
        .prepare(&version, setup)
        .map(|_| ())
        .map_err(|fault| fault.to_string());
    Ok(Checked { version, init })
}

/// Parses repeated `--config KEY=VALUE` arguments into the pairs a plugin's `init` takes.
pub fn parse_config(config: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    config
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => anyhow::bail!("--config takes KEY=VALUE, not {pair:?}"),
        })
        .collect()
}
