//! What the host refuses at load, and what it accepts.

use crate::common::{engine, plugin_bytes};

fn load_error(bytes: &[u8]) -> String {
    match engine().load(bytes) {
        Ok(_) => panic!("the engine accepted what it should refuse"),
        Err(error) => format!("{error:#}"),
    }
}

#[test]
fn every_example_plugin_loads_as_a_strategy_that_declares_its_parameters() {
    for name in ["sma-cross", "rsi-reversion", "boundary", "hostile"] {
        let version = engine()
            .load(&plugin_bytes(name))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let report = version.report();
        assert_eq!(report.world, "keel:strategy/strategy-with-params@0.1.1");
        for export in ["init", "on-candle", "on-fill", "on-timer", "params"] {
            assert!(
                report.exports.iter().any(|e| e == export),
                "{name} lacks {export}"
            );
        }
        assert!(
            report
                .imports
                .iter()
                .any(|i| i.starts_with("keel:strategy/") && i.ends_with("@0.1.1")),
            "{name}: {:?}",
            report.imports
        );
        assert!(report.params.is_some(), "{name}");
    }
}

/// The released 0.1.0 contract still loads: its imports (`...@0.1.0`) link to the host's 0.1.1
/// definitions by semantic versioning, and it declares no parameters.
#[test]
fn a_plugin_built_against_0_1_0_loads_and_declares_nothing() {
    let version = engine().load(&plugin_bytes("sma-cross-0-1-0")).unwrap();
    let report = version.report();
    assert_eq!(report.world, "keel:strategy/strategy@0.1.0");
    assert!(
        report
            .imports
            .iter()
            .any(|i| i == "keel:strategy/account@0.1.0"),
        "{:?}",
        report.imports
    );
    assert!(
        !report.imports.iter().any(|i| i.ends_with("@0.1.1")),
        "{:?}",
        report.imports
    );
    assert!(!report.exports.iter().any(|e| e == "params"));
    assert_eq!(report.params, None);
}

#[test]
fn the_declared_parameters_are_read_at_load() {
    use keel_runtime::params::ParamValue;
    let version = engine().load(&plugin_bytes("sma-cross")).unwrap();
    let params = version.report().params.clone().unwrap();
    let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["fast", "slow", "mode", "size_fraction"]);
    assert_eq!(params[0].default, ParamValue::Int(10));
    assert_eq!((params[0].min, params[0].max), (Some(1.0), Some(10_000.0)));
    assert_eq!(params[2].choices, ["long-only", "long-short"]);
    assert_eq!(params[3].default, ParamValue::Float(0.1));
    assert!(params.iter().all(|p| !p.description.is_empty()));
}

#[test]
fn an_interface_of_an_unserved_contract_version_is_refused_naming_it() {
    let wat = r#"(component
        (import "keel:strategy/log@0.2.0" (instance (export "log" (func))))
    )"#;
    let error = load_error(&wat::parse_str(wat).unwrap());
    assert!(
        error.contains(
            "plugin imports `keel:strategy/log@0.2.0`, which is outside the \
                        keel:strategy world (versions 0.1.0, 0.1.1)"
        ),
        "{error}"
    );
}

#[test]
fn component_importing_an_unknown_interface_is_refused_naming_it() {
    let wat = r#"(component
        (import "evil:net/socket@1.0.0" (instance (export "connect" (func))))
    )"#;
    let bytes = wat::parse_str(wat).unwrap();
    let error = load_error(&bytes);
    assert!(
        error.contains("plugin imports `evil:net/socket@1.0.0`"),
        "{error}"
    );
}

#[test]
fn component_importing_wasi_0_3_is_refused_naming_it() {
    let wat = r#"(component
        (import "wasi:cli/environment@0.3.0" (instance (export "get-arguments" (func))))
    )"#;
    let error = load_error(&wat::parse_str(wat).unwrap());
    assert!(error.contains("`wasi:cli/environment@0.3.0`"), "{error}");
}

#[test]
fn component_importing_a_wasi_0_2_interface_the_host_does_not_serve_is_refused_naming_it() {
    let wat = r#"(component
        (import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func))))
    )"#;
    let error = load_error(&wat::parse_str(wat).unwrap());
    assert!(
        error.contains("plugin imports something this host does not serve"),
        "{error}"
    );
    assert!(
        error.contains("wasi:http/outgoing-handler@0.2.0"),
        "{error}"
    );
}

#[test]
fn component_of_another_world_is_refused_listing_what_it_lacks() {
    let wat = r#"(component
        (core module $m (func (export "run")))
        (core instance $i (instantiate $m))
        (func $run (canon lift (core func $i "run")))
        (export "run" (func $run))
    )"#;
    let error = load_error(&wat::parse_str(wat).unwrap());
    assert!(error.contains("not a keel:strategy strategy"), "{error}");
    assert!(
        error.contains("lacks [init, on-candle, on-fill, on-timer]"),
        "{error}"
    );
}

#[test]
fn core_module_is_refused_with_how_to_build_a_component() {
    let bytes = wat::parse_str("(module (func (export \"on-candle\")))").unwrap();
    let error = load_error(&bytes);
    assert!(
        error.contains("a core WebAssembly module, not a component"),
        "{error}"
    );
    assert!(error.contains("wasm32-wasip2"), "{error}");
}

#[test]
fn random_bytes_are_refused_as_not_webassembly() {
    let error = load_error(b"\x7fELF\x02\x01\x01\x00 definitely not a plugin");
    assert_eq!(error, "not a WebAssembly file (no `\\0asm` header)");
}

#[test]
fn truncated_component_is_refused_without_panicking() {
    let bytes = plugin_bytes("sma-cross");
    let error = load_error(&bytes[..bytes.len() / 2]);
    assert!(
        error.starts_with("not a valid WebAssembly component"),
        "{error}"
    );
}

#[test]
fn compiled_plugins_are_cached_on_disk_and_reused() {
    use keel_runtime::{EngineSettings, PluginEngine};
    let dir = tempfile::tempdir().unwrap();
    let settings = EngineSettings {
        instances_max: 4,
        cache_dir: Some(dir.path().to_path_buf()),
        ..EngineSettings::default()
    };
    let engine = PluginEngine::new(settings).unwrap();
    let bytes = plugin_bytes("boundary");
    let first = engine.load(&bytes).unwrap();
    assert!(!first.report().from_cache);
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(cached.len(), 1);
    let name = cached[0].to_string_lossy().to_string();
    assert!(
        name.starts_with(first.digest().as_str()) && name.ends_with(".cwasm"),
        "{name}"
    );
    let second = engine.load(&bytes).unwrap();
    assert!(second.report().from_cache);
    assert_eq!(first.digest(), second.digest());
}

#[test]
fn a_configuration_is_checked_against_the_declared_parameters_before_init() {
    use keel_kernel::strategy::PluginFault;
    let engine = engine();
    let version = crate::common::version(engine, "sma-cross");
    let setup = crate::common::setup(&[("slow", "40"), ("fats", "10")]).name("sma");
    let profile = setup.profile;
    let refused = engine.prepare(&version, setup).err();
    assert_eq!(
        refused,
        Some(PluginFault::ConfigRefused(
            "plugin sma has no parameter `fats` (did you mean `fast`?); its parameters are \
             fast, slow, mode, size_fraction"
                .to_string()
        ))
    );
    assert_eq!(engine.fault_counts(profile)[0].1.config_refused, 1);
    let refused = engine
        .prepare(
            &version,
            crate::common::setup(&[("size_fraction", "0")]).name("sma"),
        )
        .err();
    assert_eq!(
        refused,
        Some(PluginFault::ConfigRefused(
            "plugin sma: parameter `size_fraction` takes float in [0.001, 1], not \"0\""
                .to_string()
        ))
    );
    // What `init` received: every declared parameter, the absent ones at their defaults.
    let prepared = engine
        .prepare(&version, crate::common::setup(&[("slow", "40")]))
        .unwrap();
    let config: Vec<(&str, &str)> = prepared
        .setup()
        .config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        config,
        [
            ("fast", "10"),
            ("slow", "40"),
            ("mode", "long-only"),
            ("size_fraction", "0.1")
        ]
    );
}

/// A 0.1.0 plugin declares nothing, so the host passes its configuration through untouched and
/// the plugin's own `init` is what refuses a misspelt key.
#[test]
fn a_0_1_0_plugin_checks_its_configuration_itself() {
    use keel_kernel::strategy::PluginFault;
    let engine = engine();
    let version = crate::common::version(engine, "sma-cross-0-1-0");
    let refused = engine
        .prepare(&version, crate::common::setup(&[("fats", "10")]))
        .err();
    assert_eq!(
        refused,
        Some(PluginFault::InitRefused(
            "unknown config key `fats` (did you mean `fast`?); the keys are fast, slow, mode, \
             size_fraction"
                .to_string()
        ))
    );
    let prepared = engine
        .prepare(&version, crate::common::setup(&[("fast", "5")]))
        .unwrap();
    assert_eq!(&prepared.setup().config[..], [("fast".into(), "5".into())]);
}

/// A malformed declaration is refused when the plugin loads, naming the parameter: it would
/// otherwise refuse every configuration later, its own defaults included.
#[test]
fn a_malformed_parameter_declaration_is_refused_at_load_naming_the_parameter() {
    let error = load_error(&plugin_bytes("bad-params"));
    assert_eq!(
        error,
        "the plugin's declared parameters: parameter `fast`: the default 0 is not int in [1, 10]"
    );
}
