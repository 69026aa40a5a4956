//! What the host refuses at load, and what it accepts.

use crate::common::{engine, plugin_bytes};

fn load_error(bytes: &[u8]) -> String {
    match engine().load(bytes) {
        Ok(_) => panic!("the engine accepted what it should refuse"),
        Err(error) => format!("{error:#}"),
    }
}

#[test]
fn every_example_plugin_loads_as_a_strategy() {
    for name in ["sma-cross", "rsi-reversion", "boundary", "hostile"] {
        let version = engine()
            .load(&plugin_bytes(name))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let report = version.report();
        assert_eq!(report.world, "keel:strategy/strategy@0.1.0");
        for export in ["init", "on-candle", "on-fill", "on-timer"] {
            assert!(
                report.exports.iter().any(|e| e == export),
                "{name} lacks {export}"
            );
        }
        assert!(
            report
                .imports
                .iter()
                .any(|i| i == "keel:strategy/types@0.1.0"),
            "{name}"
        );
    }
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
    assert!(
        error.contains("not a keel:strategy@0.1.0 strategy"),
        "{error}"
    );
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
