//! `keel plugin check`.

use std::path::Path;
use std::process::ExitCode;

use keel_kernel::ids::escape_unprintable;
use keel_runtime::check::{check_bytes, parse_config};
use keel_runtime::params::ParamSpec;
use keel_runtime::{
    CompileCancel, CompileLimits, EngineSettings, PluginEngine, PluginLimits, PluginVersion,
    user_cache_dir,
};

/// Loads `file` as the host would (within `compile`'s limits), then instantiates it and runs
/// `init` with `config`.
pub fn check(
    file: &Path,
    config: &[String],
    json: bool,
    compile: CompileLimits,
) -> anyhow::Result<ExitCode> {
    let pairs = parse_config(config)?;
    let (bytes, plugin_name) = keel_backtest::run::load_inputs(file)?;
    let engine = PluginEngine::new(EngineSettings {
        instances_max: 2,
        cache_dir: user_cache_dir(),
        compile,
        ..EngineSettings::default()
    })?;
    let name = file.display().to_string();
    let spinner = keel_backtest::run::compile_spinner(&name, bytes.len(), !json);
    let checked = check_bytes(&engine, &bytes, &plugin_name, pairs, &CompileCancel::new());
    spinner.finish_and_clear();
    let checked = match checked {
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
    print_params(report.params.as_deref());
    match init {
        Ok(()) => println!("init:     ok\nloadable: yes"),
        Err(fault) => {
            println!("init:     {fault}\nloadable: no");
            eprintln!("{}: refused: {fault}", file.display());
        }
    }
}

/// The parameters block of the report: one line each, name, type and range, default,
/// description.
fn print_params(params: Option<&[ParamSpec]>) {
    let Some(params) = params else {
        println!("params:   none declared (the plugin checks its configuration in init)");
        return;
    };
    println!("params:");
    let width = |texts: &[String]| texts.iter().map(String::len).max().unwrap_or(0);
    let ranges: Vec<String> = params.iter().map(ParamSpec::range_text).collect();
    let defaults: Vec<String> = params
        .iter()
        .map(|p| format!("default {}", escape_unprintable(&p.default.to_string())))
        .collect();
    let names: Vec<String> = params.iter().map(|p| p.name.clone()).collect();
    let (name_width, range_width, default_width) =
        (width(&names), width(&ranges), width(&defaults));
    for (((name, range), default), param) in names.iter().zip(&ranges).zip(&defaults).zip(params) {
        println!(
            "  {name:name_width$}  {range:range_width$}  {default:default_width$}  {}",
            escape_unprintable(&param.description)
        );
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
