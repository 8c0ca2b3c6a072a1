//! Named node parameters: type, default, range, description; checking and parsing of values.
//!
//! Values are stored in presets as plain JSON values keyed by parameter name. A parameter missing from a
//! node takes its default; a value of the wrong type or out of range is a validation error.

use serde_json::Value;

/// What a path parameter points at, which decides how it is resolved and whether it is fingerprinted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathRole {
    /// A model file or folder, relative to the models directory (absolute paths are allowed too).
    Model,
    /// An input file read by the node (an image), relative to the working directory.
    InputFile,
    /// A file or folder the node writes; may contain `{...}` placeholders.
    Output,
}

/// The type of a parameter, with its default and its allowed range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamType {
    Int {
        default: i64,
        min: i64,
        max: i64,
    },
    Float {
        default: f64,
        min: f64,
        max: f64,
    },
    Bool {
        default: bool,
    },
    Text {
        default: &'static str,
        multiline: bool,
    },
    Choice {
        default: &'static str,
        options: &'static [&'static str],
    },
    Path {
        default: &'static str,
        role: PathRole,
    },
    /// A non-empty list of numbers, each within [min, max].
    FloatList {
        default: &'static [f64],
        min: f64,
        max: f64,
    },
    /// A random seed: an integer in 0..=2^53 (exactly representable in JSON numbers everywhere).
    Seed {
        default: u64,
    },
}

/// The longest text parameter (a prompt), in bytes: CLIP reads 77 tokens, so this is already far more than
/// any model uses, and it keeps a crafted preset from feeding megabytes to the tokenizer.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// The longest path parameter, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// The largest seed: JSON readers in other languages parse numbers as doubles.
pub const MAX_SEED: u64 = 1 << 53;

/// Declaration of one parameter of a node kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    /// One line, shown as a tooltip.
    pub description: &'static str,
    /// `(parameter, value)`: this parameter matters only while that choice parameter has that value. Otherwise
    /// it is left out of the node's cache key (editing it re-runs nothing) and the editor can grey it out.
    pub only_when: Option<(&'static str, &'static str)>,
    /// For integers: the value must be a multiple of this, for the reason given (checked when a graph is
    /// validated, with the nearest valid values in the message).
    pub multiple_of: Option<(i64, &'static str)>,
}

impl ParamSpec {
    pub const fn new(name: &'static str, ty: ParamType, description: &'static str) -> Self {
        ParamSpec { name, ty, description, only_when: None, multiple_of: None }
    }

    /// Declares that an integer parameter must be a multiple of `step` (`why` says what needs it).
    pub const fn multiple_of(mut self, step: i64, why: &'static str) -> Self {
        self.multiple_of = Some((step, why));
        self
    }

    /// Declares that the parameter matters only while choice parameter `param` is `value`.
    pub const fn only_when(mut self, param: &'static str, value: &'static str) -> Self {
        self.only_when = Some((param, value));
        self
    }

    /// The default value as JSON.
    pub fn default_value(&self) -> Value {
        match self.ty {
            ParamType::Int { default, .. } => Value::from(default),
            ParamType::Float { default, .. } => Value::from(default),
            ParamType::Bool { default } => Value::from(default),
            ParamType::Text { default, .. } | ParamType::Choice { default, .. } | ParamType::Path { default, .. } => {
                Value::from(default)
            }
            ParamType::FloatList { default, .. } => Value::from(default.to_vec()),
            ParamType::Seed { default } => Value::from(default),
        }
    }

    /// A short description of the type and range, for messages and tooltips ("integer in 1..=64").
    pub fn type_description(&self) -> String {
        match self.ty {
            ParamType::Int { min, max, .. } => format!("an integer in {min}..={max}"),
            ParamType::Float { min, max, .. } => format!("a number in {min}..={max}"),
            ParamType::Bool { .. } => "true or false".to_string(),
            ParamType::Text { .. } => "text".to_string(),
            ParamType::Choice { options, .. } => format!("one of {}", options.join(", ")),
            ParamType::Path { .. } => "a path".to_string(),
            ParamType::FloatList { min, max, .. } => {
                format!("a non-empty list of numbers in {min}..={max}")
            }
            ParamType::Seed { .. } => format!("a seed in 0..={MAX_SEED}"),
        }
    }

    /// Checks a value against this parameter's type and range. The error says what was expected and what
    /// was found.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        let found = || describe_value(value);
        let ok = match self.ty {
            ParamType::Int { min, max, .. } => match value.as_i64() {
                Some(v) if (min..=max).contains(&v) => true,
                Some(v) => return Err(format!("{v} is out of range: expected {}", self.type_description())),
                None => false,
            },
            ParamType::Float { min, max, .. } => match value.as_f64() {
                Some(v) if v.is_finite() && v >= min && v <= max => true,
                Some(v) => return Err(format!("{v} is out of range: expected {}", self.type_description())),
                None => false,
            },
            ParamType::Bool { .. } => value.is_boolean(),
            ParamType::Text { .. } | ParamType::Path { .. } => match value.as_str() {
                Some(text) => {
                    let limit = if matches!(self.ty, ParamType::Path { .. }) { MAX_PATH_BYTES } else { MAX_TEXT_BYTES };
                    if text.len() > limit {
                        return Err(format!(
                            "the text is {} bytes long; at most {limit} bytes are allowed",
                            text.len()
                        ));
                    }
                    if text.contains('\0') {
                        return Err("the text contains a NUL character".to_string());
                    }
                    true
                }
                None => false,
            },
            ParamType::Choice { options, .. } => match value.as_str() {
                Some(s) if options.contains(&s) => true,
                Some(s) => {
                    return Err(format!("\"{s}\" is not allowed: expected {}", self.type_description()));
                }
                None => false,
            },
            ParamType::FloatList { min, max, .. } => match value.as_array() {
                Some(items) if items.is_empty() => {
                    return Err(format!("the list is empty: expected {}", self.type_description()));
                }
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        match item.as_f64() {
                            Some(v) if v.is_finite() && v >= min && v <= max => {}
                            _ => {
                                return Err(format!(
                                    "item {i} ({}) is not allowed: expected {}",
                                    describe_value(item),
                                    self.type_description()
                                ));
                            }
                        }
                    }
                    true
                }
                None => false,
            },
            ParamType::Seed { .. } => match value.as_u64() {
                Some(v) if v <= MAX_SEED => true,
                Some(v) => return Err(format!("{v} is out of range: expected {}", self.type_description())),
                None => false,
            },
        };
        if ok { Ok(()) } else { Err(format!("expected {}, found {}", self.type_description(), found())) }
    }

    /// Parses a command-line value (`--set node.param=VALUE`) into JSON for this parameter, then checks it.
    pub fn parse(&self, text: &str) -> Result<Value, String> {
        let value = match self.ty {
            ParamType::Int { .. } => text
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("\"{text}\" is not {}", self.type_description()))?,
            ParamType::Seed { .. } => text
                .trim()
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| format!("\"{text}\" is not {}", self.type_description()))?,
            ParamType::Float { .. } => match text.trim().parse::<f64>() {
                Ok(v) if v.is_finite() => Value::from(v),
                // NaN and infinities parse, but JSON has no such numbers: say so instead of "found null".
                Ok(_) => {
                    return Err(format!("\"{text}\" is not a finite number: expected {}", self.type_description()));
                }
                Err(_) => return Err(format!("\"{text}\" is not {}", self.type_description())),
            },
            ParamType::Bool { .. } => match text.trim() {
                "true" | "1" | "yes" | "on" => Value::Bool(true),
                "false" | "0" | "no" | "off" => Value::Bool(false),
                _ => return Err(format!("\"{text}\" is not {}", self.type_description())),
            },
            ParamType::Text { .. } | ParamType::Choice { .. } | ParamType::Path { .. } => Value::from(text),
            ParamType::FloatList { .. } => {
                let trimmed = text.trim().trim_start_matches('[').trim_end_matches(']');
                let mut items = Vec::new();
                for part in trimmed.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let v = part.parse::<f64>().map_err(|_| format!("\"{part}\" in \"{text}\" is not a number"))?;
                    if !v.is_finite() {
                        return Err(format!("\"{part}\" in \"{text}\" is not a finite number"));
                    }
                    items.push(Value::from(v));
                }
                Value::Array(items)
            }
        };
        self.check(&value)?;
        Ok(value)
    }
}

/// A short description of a JSON value for messages: its type and, for scalars, the value.
pub fn describe_value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("text \"{s}\""),
        Value::Array(a) => format!("a list of {} item(s)", a.len()),
        Value::Object(_) => "an object".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CFG: ParamSpec = ParamSpec::new("cfg", ParamType::Float { default: 7.5, min: 0.0, max: 30.0 }, "guidance");
    const STEPS: ParamSpec = ParamSpec::new("steps", ParamType::Int { default: 25, min: 1, max: 1000 }, "steps");
    const MODE: ParamSpec =
        ParamSpec::new("mode", ParamType::Choice { default: "reward", options: &["reward", "manual"] }, "mode");
    const SIZES: ParamSpec =
        ParamSpec::new("step_sizes", ParamType::FloatList { default: &[10.0, 1.0], min: 0.0, max: 1000.0 }, "sizes");

    #[test]
    fn check_accepts_in_range_and_rejects_out_of_range() {
        assert!(CFG.check(&json!(7.5)).is_ok());
        assert!(CFG.check(&json!(7)).is_ok(), "integers are valid floats");
        let err = CFG.check(&json!(31.0)).unwrap_err();
        assert!(err.contains("31") && err.contains("0..=30"), "{err}");
        let err = STEPS.check(&json!(2.5)).unwrap_err();
        assert!(err.contains("integer") && err.contains("2.5"), "{err}");
        let err = MODE.check(&json!("best")).unwrap_err();
        assert!(err.contains("best") && err.contains("reward, manual"), "{err}");
        assert!(SIZES.check(&json!([])).is_err());
        let err = SIZES.check(&json!([1, "x"])).unwrap_err();
        assert!(err.contains("item 1"), "{err}");
    }

    #[test]
    fn parse_reads_command_line_values() {
        assert_eq!(STEPS.parse("30").unwrap(), json!(30));
        assert!(STEPS.parse("0").is_err());
        assert!(STEPS.parse("many").unwrap_err().contains("many"));
        assert_eq!(SIZES.parse("10,10, 10,1").unwrap(), json!([10.0, 10.0, 10.0, 1.0]));
        assert_eq!(SIZES.parse("[2.5]").unwrap(), json!([2.5]));
        assert_eq!(CFG.parse("9").unwrap(), json!(9.0));
        for bad in ["nan", "NaN", "inf", "-infinity"] {
            let err = CFG.parse(bad).unwrap_err();
            assert!(err.contains(bad) && err.contains("finite") && !err.contains("null"), "{err}");
        }
        assert!(SIZES.parse("1,nan").unwrap_err().contains("finite"));
    }

    #[test]
    fn text_and_paths_have_a_length_limit() {
        const PROMPT: ParamSpec =
            ParamSpec::new("positive", ParamType::Text { default: "", multiline: true }, "prompt");
        assert!(PROMPT.check(&json!("a".repeat(MAX_TEXT_BYTES))).is_ok());
        let err = PROMPT.check(&json!("a".repeat(MAX_TEXT_BYTES + 1))).unwrap_err();
        assert!(err.contains(&(MAX_TEXT_BYTES + 1).to_string()) && err.contains("at most"), "{err}");
        const PATH: ParamSpec = ParamSpec::new("path", ParamType::Path { default: "", role: PathRole::Output }, "p");
        assert!(PATH.check(&json!("x".repeat(MAX_PATH_BYTES + 1))).is_err());
        assert!(PATH.check(&json!("a\0b")).unwrap_err().contains("NUL"));
    }

    #[test]
    fn defaults_pass_their_own_check() {
        for spec in [CFG, STEPS, MODE, SIZES] {
            spec.check(&spec.default_value()).unwrap();
        }
    }
}
