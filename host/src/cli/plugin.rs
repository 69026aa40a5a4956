//! `keel plugin check`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use keel_kernel::ids::ProfileId;

use keel_kernel::engine::SystemClock;

use crate::runtime::{
    EngineSettings, InstanceSetup, PluginEngine, PluginLimits, PluginVersion, user_cache_dir,
};

/// What checking a plugin found: the loaded version and whether `init` accepted the config.
pub struct Checked {
    /// The validated, compiled plugin version.
    pub version: PluginVersion,
    /// `init`'s answer: the fault when it refused.
    pub init: Result<(), String>,
}

/// Checks plugin bytes exactly as the host loads them: validation and compilation, then an
/// instance whose `init` runs with `config`. `Err` is the reason the bytes were refused at load.
pub fn check_bytes(
    engine: &PluginEngine,
    bytes: &[u8],
    config: Vec<(String, String)>,
) -> Result<Checked, String> {
    let version = engine.load(bytes).map_err(|error| format!("{error:#}"))?;
    let setup = InstanceSetup::new(ProfileId::new_random(), Arc::new(SystemClock)).config(config);
    let init = engine
        .prepare(&version, setup)
        .map(|_| ())
        .map_err(|fault| fault.to_string());
    Ok(Checked { version, init })
}

/// Loads `file` as the host would, then instantiates it and runs `init` with `config`.
pub fn check(file: &Path, config: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let pairs = super::parse_config(config)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let engine = PluginEngine::new(EngineSettings {
        instances_max: 2,
        cache_dir: user_cache_dir(),
        ..EngineSettings::default()
    })?;
    let checked = match check_bytes(&engine, &bytes, pairs) {
        Ok(checked) => checked,
        Err(reason) => {
            print_refusal(file, &reason, json);
            return Ok(ExitCode::FAILURE);
        }
    };
    print_report(
        file,
        checked.version.digest().as_str(),
        &checked.version,
        &checked.init,
        json,
    );
    Ok(if checked.init.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_refusal(file: &Path, reason: &str, json: bool) {
    if json {
        let out = serde_json::json!({ "file": file, "loadable": false, "reason": reason });
        println!("{out}");
    } else {
        eprintln!("{}: refused: {reason}", file.display());
    }
}

fn print_report(
    file: &Path,
    digest: &str,
    version: &PluginVersion,
    init: &Result<(), String>,
    json: bool,
) {
    let report = version.report();
    let limits = version.limits();
    if json {
        let out = serde_json::json!({
            "file": file, "loadable": init.is_ok(), "sha256": digest, "report": report,
            "limits": {
                "fuel_per_call": limits.fuel_per_call,
                "fuel_per_init": limits.fuel_per_init,
                "memory_bytes_max": limits.memory_bytes_max,
            },
            "init": match init { Ok(()) => "ok".to_string(), Err(e) => e.clone() },
        });
        println!("{out}");
        return;
    }
    println!("plugin:   {}", file.display());
    println!("sha256:   {digest}");
    println!("world:    {}", report.world);
    println!("language: {}", report.language.as_str());
    println!("budgets:  {}", budgets(limits));
    println!("size:     {} bytes", report.size_bytes);
    let source = if report.from_cache {
        "from cache"
    } else {
        "compiled"
    };
    println!("compile:  {:.1} ms ({source})", report.compile_ms);
    println!("exports:  {}", report.exports.join(", "));
    println!("imports:");
    for import in &report.imports {
        println!("  {import}");
    }
    match init {
        Ok(()) => println!("init:     ok\nloadable: yes"),
        Err(fault) => {
            println!("init:     {fault}\nloadable: no");
            eprintln!("{}: refused: {fault}", file.display());
        }
    }
}

/// The budgets line of the report.
fn budgets(limits: &PluginLimits) -> String {
    format!(
        "{} fuel per call, {} fuel for init, {} MiB of memory",
        limits.fuel_per_call,
        limits.fuel_per_init,
        limits.memory_bytes_max >> 20
    )
}
