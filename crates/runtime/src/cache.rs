//! Compiled plugins cached on disk, keyed by the plugin's sha256 and the engine's compatibility
//! hash: a cached artifact is only ever loaded by an engine that could have produced it.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginDigest;
use super::compile::deserialize;

/// Feeds `Hash` output into sha256, so the engine key is stable across processes (unlike
/// `DefaultHasher`, whose algorithm may change between Rust releases).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        unreachable!("the digest is read with finalize")
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// A hex digest of everything that makes compiled code loadable by this engine.
pub(crate) fn engine_key(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..16])
}

/// Names the environment variable that overrides [`user_cache_dir`].
pub const CACHE_DIR_ENV: &str = "KEEL_PLUGIN_CACHE_DIR";

/// Where the command-line tools (`keel plugin check`, `keel backtest`, `keel bench backtest`)
/// cache compiled plugins: `$KEEL_PLUGIN_CACHE_DIR`, else `$XDG_CACHE_HOME/keel/plugins`, else
/// `$HOME/.cache/keel/plugins`; `None` when none is set. A large plugin (a Python one takes
/// seconds to compile) is then compiled once per machine and version of Keel.
pub fn user_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var(CACHE_DIR_ENV)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("keel/plugins")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/keel/plugins")))
}

/// The on-disk cache of compiled components.
#[derive(Debug, Clone)]
pub(crate) struct CompiledCache {
    dir: PathBuf,
    engine_key: String,
}

/// Where a component came from, for `keel plugin check` and the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Compiled now by Cranelift.
    Compiled,
    /// Loaded from the on-disk cache.
    Cache,
}

impl CompiledCache {
    pub fn new(dir: &Path, engine: &Engine) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating plugin cache directory {}", dir.display()))?;
        Ok(CompiledCache {
            dir: dir.to_path_buf(),
            engine_key: engine_key(engine),
        })
    }

    fn path(&self, digest: &PluginDigest) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", digest.as_str(), self.engine_key))
    }

    /// Loads the compiled form of `digest`, or compiles it with `compile` and stores the
    /// result.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &PluginDigest,
        compile: impl FnOnce() -> anyhow::Result<Component>,
    ) -> anyhow::Result<(Component, CompileSource)> {
        let path = self.path(digest);
        if path.exists() {
            match deserialize(engine, &path) {
                Ok(component) => return Ok((component, CompileSource::Cache)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), "recompiling a cached plugin: {error:#}");
                }
            }
        }
        let component = compile()?;
        self.store(&path, &component)?;
        Ok((component, CompileSource::Compiled))
    }

    /// Writes to a temporary file first and renames it, so a reader never sees half a file.
    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        let serialized = component
            .serialize()
            .map_err(|e| e.context("serializing a compiled plugin"))?;
        let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&temporary, serialized)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))
    }
}
