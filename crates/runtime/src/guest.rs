//! What a plugin was written in, read from the component's structure: it picks the budgets the
//! plugin's instances run under (see [`PluginLimits::python`](super::PluginLimits::python)).

use wasmparser::{Parser, Payload};

/// The language runtime a plugin carries, as far as the host needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestLanguage {
    /// A CPython interpreter built in by componentize-py: a large heap and many instructions per
    /// call, so its own budgets.
    Python,
    /// Compiled code (Rust, C, Go, …): the standard budgets.
    Compiled,
}

impl GuestLanguage {
    /// Detects the language of a component. A componentize-py component links CPython as a
    /// shared library named `libpython3.<minor>.so`: its core modules import from it or export
    /// its symbols under that name. A guest that merely borrows the name gets the Python
    /// budgets, which are larger but still bounded and per instance (`docs/plugin-authoring.md`).
    pub fn detect(bytes: &[u8]) -> GuestLanguage {
        for payload in Parser::new(0).parse_all(bytes) {
            let found = match payload {
                Ok(Payload::ImportSection(reader)) => reader
                    .into_imports()
                    .any(|import| import.is_ok_and(|i| is_libpython(i.module))),
                Ok(Payload::ExportSection(reader)) => reader
                    .into_iter()
                    .any(|export| export.is_ok_and(|e| is_libpython(e.name))),
                Ok(_) => false,
                // Validation at load reports malformed components; detection only looks.
                Err(_) => return GuestLanguage::Compiled,
            };
            if found {
                return GuestLanguage::Python;
            }
        }
        GuestLanguage::Compiled
    }

    /// The name shown by `keel plugin check`.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestLanguage::Python => "python",
            GuestLanguage::Compiled => "compiled",
        }
    }
}

fn is_libpython(name: &str) -> bool {
    name.starts_with("libpython3.")
}
