//! Declared parameters (`keel:strategy@0.1.1`): what a plugin says its `init` reads, checked
//! once when the plugin loads, and the check of a configuration against them before `init`.
//!
//! ```
//! use keel_runtime::params::{ParamSpec, ParamValue, check_config};
//!
//! let specs = vec![ParamSpec {
//!     name: "fast".into(),
//!     default: ParamValue::Int(10),
//!     min: Some(1.0),
//!     max: Some(500.0),
//!     choices: Vec::new(),
//!     description: "Length of the fast average, in candles.".into(),
//! }];
//! let config = check_config("sma-cross", &specs, &[]).unwrap();
//! assert_eq!(config, [("fast".to_string(), "10".to_string())]);
//! let error = check_config("sma-cross", &specs, &[("fats".into(), "12".into())]).unwrap_err();
//! assert!(error.to_string().contains("has no parameter `fats` (did you mean `fast`?)"));
//! ```

use std::fmt;

use keel_kernel::ids::escape_unprintable;

use crate::wit::keel::strategy::types as wit;

/// Most parameters one plugin declares.
pub const PARAMS_MAX: usize = 64;
/// The longest parameter name, in bytes.
pub const PARAM_NAME_BYTES_MAX: usize = 64;
/// The longest description, text default or choice, in bytes.
pub const PARAM_TEXT_BYTES_MAX: usize = 256;
/// Most choices one text parameter lists.
pub const PARAM_CHOICES_MAX: usize = 64;

/// One declared parameter, as the plugin declared it and the host checked it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParamSpec {
    /// The configuration key.
    pub name: String,
    /// The type, and the value used when the configuration does not set the parameter.
    pub default: ParamValue,
    /// The smallest value allowed (numbers only), inclusive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The largest value allowed (numbers only), inclusive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The values a text parameter may take (any text when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// What the parameter does.
    pub description: String,
}

/// A parameter's value; its case is the parameter's type.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum ParamValue {
    /// A whole number.
    Int(i64),
    /// A finite decimal number.
    Float(f64),
    /// `true` or `false`.
    Boolean(bool),
    /// Text.
    Text(String),
}

impl ParamValue {
    /// The type's name, as `keel plugin check` shows it.
    pub fn type_name(&self) -> &'static str {
        match self {
            ParamValue::Int(_) => "int",
            ParamValue::Float(_) => "float",
            ParamValue::Boolean(_) => "boolean",
            ParamValue::Text(_) => "text",
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            ParamValue::Int(value) => Some(*value as f64),
            ParamValue::Float(value) => Some(*value),
            ParamValue::Boolean(_) | ParamValue::Text(_) => None,
        }
    }

    /// Reads `text` as a value of this one's type.
    fn parse_like(&self, text: &str) -> Option<ParamValue> {
        let text = text.trim();
        match self {
            ParamValue::Int(_) => text.parse().ok().map(ParamValue::Int),
            ParamValue::Float(_) => text
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(ParamValue::Float),
            ParamValue::Boolean(_) => text.parse().ok().map(ParamValue::Boolean),
            ParamValue::Text(_) => Some(ParamValue::Text(text.to_string())),
        }
    }
}

/// The value as configuration text (what `init` receives).
impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Int(value) => write!(f, "{value}"),
            ParamValue::Float(value) => write!(f, "{value}"),
            ParamValue::Boolean(value) => write!(f, "{value}"),
            ParamValue::Text(value) => f.write_str(value),
        }
    }
}

impl ParamSpec {
    /// What the parameter takes, in words: `int in [1, 500]`, `text: long-only | long-short`.
    pub fn range_text(&self) -> String {
        let kind = self.default.type_name();
        if !self.choices.is_empty() {
            return format!("{kind}: {}", self.choices.join(" | "));
        }
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("{kind} in [{min}, {max}]"),
            (Some(min), None) => format!("{kind} >= {min}"),
            (None, Some(max)) => format!("{kind} <= {max}"),
            (None, None) => kind.to_string(),
        }
    }

    /// Whether `value` (of this parameter's type) is within its range and choices.
    fn admits(&self, value: &ParamValue) -> bool {
        if let Some(number) = value.number() {
            return self.min.is_none_or(|min| number >= min)
                && self.max.is_none_or(|max| number <= max);
        }
        match value {
            ParamValue::Text(text) => self.choices.is_empty() || self.choices.contains(text),
            _ => true,
        }
    }
}

/// A configuration that does not fit the declared parameters: names the plugin, the key and
/// what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Checks `config` against the parameters `plugin` declares and returns what `init` receives:
/// every declared parameter in declaration order, with the configuration's value (the last one
/// when a key repeats) or the default, written as canonical text. An unknown key, a value that
/// is not of the parameter's type, and a value outside its range or choices are refused.
pub fn check_config(
    plugin: &str,
    specs: &[ParamSpec],
    config: &[(String, String)],
) -> Result<Vec<(String, String)>, ConfigError> {
    if let Some((key, _)) = config
        .iter()
        .find(|(key, _)| !specs.iter().any(|s| s.name == *key))
    {
        return Err(unknown_key(plugin, specs, key));
    }
    specs
        .iter()
        .map(|spec| {
            let given = config.iter().rev().find(|(key, _)| *key == spec.name);
            let value = match given {
                None => spec.default.clone(),
                Some((_, text)) => check_value(plugin, spec, text)?,
            };
            Ok((spec.name.clone(), value.to_string()))
        })
        .collect()
}

fn check_value(plugin: &str, spec: &ParamSpec, text: &str) -> Result<ParamValue, ConfigError> {
    let name = &spec.name;
    let Some(value) = spec.default.parse_like(text) else {
        let kind = spec.default.type_name();
        return Err(ConfigError(format!(
            "plugin {plugin}: parameter `{name}` takes {}, not {text:?}",
            article(kind)
        )));
    };
    if !spec.admits(&value) {
        return Err(ConfigError(format!(
            "plugin {plugin}: parameter `{name}` takes {}, not {text:?}",
            spec.range_text()
        )));
    }
    Ok(value)
}

fn article(kind: &str) -> String {
    match kind {
        "int" => "an int".to_string(),
        other => format!("a {other}"),
    }
}

fn unknown_key(plugin: &str, specs: &[ParamSpec], key: &str) -> ConfigError {
    if specs.is_empty() {
        return ConfigError(format!(
            "plugin {plugin} has no parameter `{key}`: it declares no parameters"
        ));
    }
    let nearest = specs
        .iter()
        .map(|s| (edit_distance(key, &s.name), s.name.as_str()))
        .min()
        .filter(|(distance, _)| *distance <= 2)
        .map(|(_, name)| format!(" (did you mean `{name}`?)"))
        .unwrap_or_default();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    ConfigError(format!(
        "plugin {plugin} has no parameter `{key}`{nearest}; its parameters are {}",
        names.join(", ")
    ))
}

/// The Levenshtein distance between two short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Checks what a plugin's `params` returned: at most [`PARAMS_MAX`] parameters with distinct,
/// well-formed names, bounds only on numbers and in order, choices only on text, sizes within
/// their limits and each default admitted by its own parameter. The error names the parameter.
pub(crate) fn check_declared(declared: Vec<wit::ParamSpec>) -> Result<Vec<ParamSpec>, String> {
    if declared.len() > PARAMS_MAX {
        return Err(format!(
            "it declares {} parameters, more than the {PARAMS_MAX} allowed",
            declared.len()
        ));
    }
    let mut specs: Vec<ParamSpec> = Vec::with_capacity(declared.len());
    for raw in declared {
        let spec = from_wit(raw);
        // The plugin's own text, shown in errors: printable and short.
        let name = escape_unprintable(&spec.name);
        let name = crate::instance::truncate(name.into_owned(), PARAM_NAME_BYTES_MAX + 16);
        if !name_is_well_formed(&spec.name) {
            return Err(format!(
                "parameter name {name:?} is not 1 to {PARAM_NAME_BYTES_MAX} bytes of \
                 [a-z0-9_-] starting with a letter"
            ));
        }
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(format!("parameter `{name}` is declared twice"));
        }
        check_spec(&spec).map_err(|problem| format!("parameter `{name}`: {problem}"))?;
        specs.push(spec);
    }
    Ok(specs)
}

fn from_wit(raw: wit::ParamSpec) -> ParamSpec {
    let default = match raw.default {
        wit::ParamValue::Int(value) => ParamValue::Int(value),
        wit::ParamValue::Float(value) => ParamValue::Float(value),
        wit::ParamValue::Boolean(value) => ParamValue::Boolean(value),
        wit::ParamValue::Text(value) => ParamValue::Text(value),
    };
    ParamSpec {
        name: raw.name,
        default,
        min: raw.min,
        max: raw.max,
        choices: raw.choices,
        description: raw.description,
    }
}

fn name_is_well_formed(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= PARAM_NAME_BYTES_MAX
}

fn check_spec(spec: &ParamSpec) -> Result<(), String> {
    let texts = std::iter::once(&spec.description).chain(&spec.choices);
    if let Some(long) = texts
        .chain(match &spec.default {
            ParamValue::Text(text) => Some(text),
            _ => None,
        })
        .find(|t| t.len() > PARAM_TEXT_BYTES_MAX)
    {
        return Err(format!(
            "a text of {} bytes, more than the {PARAM_TEXT_BYTES_MAX} allowed",
            long.len()
        ));
    }
    let numeric = spec.default.number().is_some();
    let bounded = spec.min.is_some() || spec.max.is_some();
    if bounded && !numeric {
        return Err(format!(
            "min and max apply to numbers, not to a {}",
            spec.default.type_name()
        ));
    }
    if [spec.min, spec.max]
        .iter()
        .flatten()
        .any(|b| !b.is_finite())
    {
        return Err("min and max must be finite".to_string());
    }
    if let (Some(min), Some(max)) = (spec.min, spec.max)
        && min > max
    {
        return Err(format!("min {min} is above max {max}"));
    }
    if !spec.choices.is_empty() && !matches!(spec.default, ParamValue::Text(_)) {
        return Err("choices apply to text parameters only".to_string());
    }
    if spec.choices.len() > PARAM_CHOICES_MAX {
        return Err(format!(
            "{} choices, more than the {PARAM_CHOICES_MAX} allowed",
            spec.choices.len()
        ));
    }
    if matches!(spec.default, ParamValue::Float(v) if !v.is_finite()) {
        return Err("the default must be finite".to_string());
    }
    if !spec.admits(&spec.default) {
        return Err(format!(
            "the default {} is not {}",
            spec.default,
            spec.range_text()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(name: &str, default: i64, min: f64, max: f64) -> ParamSpec {
        ParamSpec {
            name: name.to_string(),
            default: ParamValue::Int(default),
            min: Some(min),
            max: Some(max),
            choices: Vec::new(),
            description: String::new(),
        }
    }

    fn specs() -> Vec<ParamSpec> {
        vec![
            int("fast", 10, 1.0, 500.0),
            int("slow", 30, 2.0, 10_000.0),
            ParamSpec {
                name: "mode".to_string(),
                default: ParamValue::Text("long-only".to_string()),
                min: None,
                max: None,
                choices: vec!["long-only".to_string(), "long-short".to_string()],
                description: String::new(),
            },
            ParamSpec {
                name: "size_fraction".to_string(),
                default: ParamValue::Float(0.1),
                min: Some(0.001),
                max: Some(1.0),
                choices: Vec::new(),
                description: String::new(),
            },
            ParamSpec {
                name: "verbose".to_string(),
                default: ParamValue::Boolean(false),
                min: None,
                max: None,
                choices: Vec::new(),
                description: String::new(),
            },
        ]
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn refusal(items: &[(&str, &str)]) -> String {
        check_config("sma-cross", &specs(), &pairs(items))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn absent_parameters_get_their_defaults_in_declared_order() {
        let config = check_config("sma-cross", &specs(), &pairs(&[("slow", " 40 ")])).unwrap();
        assert_eq!(
            config,
            pairs(&[
                ("fast", "10"),
                ("slow", "40"),
                ("mode", "long-only"),
                ("size_fraction", "0.1"),
                ("verbose", "false"),
            ])
        );
    }

    #[test]
    fn the_last_value_of_a_repeated_key_wins() {
        let config = check_config(
            "p",
            &specs(),
            &pairs(&[("fast", "5"), ("fast", "7"), ("size_fraction", "1e-2")]),
        )
        .unwrap();
        assert_eq!(config[0], ("fast".to_string(), "7".to_string()));
        assert_eq!(config[3], ("size_fraction".to_string(), "0.01".to_string()));
    }

    #[test]
    fn an_unknown_key_is_refused_naming_the_nearest_and_every_parameter() {
        assert_eq!(
            refusal(&[("fast", "5"), ("fats", "10")]),
            "plugin sma-cross has no parameter `fats` (did you mean `fast`?); its parameters \
             are fast, slow, mode, size_fraction, verbose"
        );
        assert_eq!(
            refusal(&[("threshold", "1")]),
            "plugin sma-cross has no parameter `threshold`; its parameters are fast, slow, mode, \
             size_fraction, verbose"
        );
        let none = check_config("quiet", &[], &pairs(&[("x", "1")])).unwrap_err();
        assert_eq!(
            none.to_string(),
            "plugin quiet has no parameter `x`: it declares no parameters"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_naming_the_type() {
        assert_eq!(
            refusal(&[("fast", "ten")]),
            "plugin sma-cross: parameter `fast` takes an int, not \"ten\""
        );
        assert_eq!(
            refusal(&[("fast", "2.5")]),
            "plugin sma-cross: parameter `fast` takes an int, not \"2.5\""
        );
        assert_eq!(
            refusal(&[("size_fraction", "NaN")]),
            "plugin sma-cross: parameter `size_fraction` takes a float, not \"NaN\""
        );
        assert_eq!(
            refusal(&[("verbose", "yes")]),
            "plugin sma-cross: parameter `verbose` takes a boolean, not \"yes\""
        );
    }

    #[test]
    fn values_below_min_or_above_max_are_refused_with_the_range() {
        assert_eq!(
            refusal(&[("fast", "0")]),
            "plugin sma-cross: parameter `fast` takes int in [1, 500], not \"0\""
        );
        assert_eq!(
            refusal(&[("slow", "10001")]),
            "plugin sma-cross: parameter `slow` takes int in [2, 10000], not \"10001\""
        );
        assert_eq!(
            refusal(&[("size_fraction", "1.5")]),
            "plugin sma-cross: parameter `size_fraction` takes float in [0.001, 1], not \"1.5\""
        );
        // The bounds are inclusive.
        assert!(check_config("p", &specs(), &pairs(&[("fast", "500")])).is_ok());
        assert!(check_config("p", &specs(), &pairs(&[("size_fraction", "1")])).is_ok());
    }

    #[test]
    fn a_text_outside_its_choices_is_refused_listing_them() {
        assert_eq!(
            refusal(&[("mode", "both")]),
            "plugin sma-cross: parameter `mode` takes text: long-only | long-short, not \"both\""
        );
    }

    fn declared(name: &str, default: wit::ParamValue) -> wit::ParamSpec {
        wit::ParamSpec {
            name: name.to_string(),
            default,
            min: None,
            max: None,
            choices: Vec::new(),
            description: "d".to_string(),
        }
    }

    #[test]
    fn a_well_formed_declaration_is_taken_as_declared() {
        let mut fast = declared("fast", wit::ParamValue::Int(10));
        fast.min = Some(1.0);
        let specs = check_declared(vec![
            fast,
            declared("mode", wit::ParamValue::Text("a".into())),
        ])
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].range_text(), "int >= 1");
        assert_eq!(specs[1].range_text(), "text");
    }

    #[test]
    fn a_malformed_declaration_is_refused_naming_the_parameter() {
        let check = |spec: wit::ParamSpec| check_declared(vec![spec]).unwrap_err();
        assert!(check(declared("Fast", wit::ParamValue::Int(1))).contains("\"Fast\" is not"));
        assert!(check(declared("", wit::ParamValue::Int(1))).contains("\"\" is not"));
        let mut reversed = declared("fast", wit::ParamValue::Int(5));
        (reversed.min, reversed.max) = (Some(10.0), Some(1.0));
        assert_eq!(check(reversed), "parameter `fast`: min 10 is above max 1");
        let mut outside = declared("fast", wit::ParamValue::Int(0));
        outside.min = Some(1.0);
        assert_eq!(
            check(outside),
            "parameter `fast`: the default 0 is not int >= 1"
        );
        let mut bounded_text = declared("mode", wit::ParamValue::Text("a".into()));
        bounded_text.max = Some(1.0);
        assert!(check(bounded_text).contains("min and max apply to numbers"));
        let mut choice = declared("mode", wit::ParamValue::Text("c".into()));
        choice.choices = vec!["a".into(), "b".into()];
        assert!(check(choice).contains("the default c is not text: a | b"));
        assert!(check(declared("x", wit::ParamValue::Float(f64::NAN))).contains("finite"));
        let twice = vec![
            declared("fast", wit::ParamValue::Int(1)),
            declared("fast", wit::ParamValue::Int(2)),
        ];
        assert_eq!(
            check_declared(twice).unwrap_err(),
            "parameter `fast` is declared twice"
        );
        let many = (0..=PARAMS_MAX)
            .map(|i| declared(&format!("p{i}"), wit::ParamValue::Boolean(true)))
            .collect();
        assert!(check_declared(many).unwrap_err().contains("65 parameters"));
    }
}
