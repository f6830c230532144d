//! TraceSetting's values, as Triton keeps them: global values, and per model the values set for
//! that model alone (the rest follow the global ones). Every value is a list of strings on the
//! wire (`trace_level` may hold two levels). The tracer ([`super::Tracer`]) compiles these into
//! the sampling policies after every change.

use std::collections::HashMap;

use tritium_proto::inference::trace_setting_request::SettingValue as TraceInValue;

use crate::error::TraceError;

/// The keys, with Triton 2.51's defaults (`--trace-config` replaces them at start).
pub const TRACE_DEFAULTS: &[(&str, &str)] = &[
    ("trace_file", ""),
    ("trace_level", "OFF"),
    ("trace_rate", "1000"),
    ("trace_count", "-1"),
    ("log_frequency", "0"),
    ("trace_mode", "triton"),
];

pub(super) type Values = HashMap<String, Vec<String>>;

fn invalid(reason: String) -> TraceError {
    TraceError::InvalidArgument { reason }
}

#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// What a global key's cleared value returns to: the start-up value.
    initial: Values,
    values: Values,
    models: HashMap<String, Values>,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings::new(TRACE_DEFAULTS.iter().map(|(k, v)| (k.to_string(), vec![v.to_string()])).collect())
    }
}

impl TraceSettings {
    /// Settings starting from `initial` (every key of [`TRACE_DEFAULTS`]).
    pub fn new(initial: Values) -> TraceSettings {
        TraceSettings { values: initial.clone(), initial, models: HashMap::new() }
    }

    /// Checks an update as Triton 2.51 does and returns what of it applies: keys it does not know,
    /// `trace_mode`, a level list with a level it does not know (and, in OpenTelemetry mode,
    /// `log_frequency`) are ignored; a value it cannot take refuses the whole update, which then
    /// changes nothing. `file_needed`: a level other than `OFF` needs a trace file (Triton's
    /// trace-file mode).
    pub fn check(
        &self,
        model: &str,
        update: HashMap<String, TraceInValue>,
        file_needed: bool,
    ) -> Result<HashMap<String, TraceInValue>, TraceError> {
        let mut applied = HashMap::new();
        for (key, mut value) in update {
            let values = &value.value;
            if values.len() > 1 && key != "trace_level" && TRACE_DEFAULTS.iter().any(|(k, _)| *k == key) {
                return Err(invalid(format!("expect only 1 value for '{key}'")));
            }
            let first = values.first().map(String::as_str);
            match (key.as_str(), first) {
                ("trace_file", Some(_)) => {
                    return Err(TraceError::Unsupported {
                        what: "trace file location can not be updated through network protocol".into(),
                    });
                }
                ("trace_level", Some(_)) => {
                    // Levels Triton does not know are passed over; none left changes nothing.
                    // Each level once: what is kept is bounded whatever the client sends.
                    let mut levels: Vec<String> = Vec::with_capacity(3);
                    for level in value.value.drain(..) {
                        if matches!(level.as_str(), "OFF" | "TIMESTAMPS" | "TENSORS") && !levels.contains(&level) {
                            levels.push(level);
                        }
                    }
                    value.value = levels;
                    let values = &value.value;
                    if values.is_empty() {
                        continue;
                    }
                    if values.len() > 1 && values.iter().any(|l| l == "OFF") {
                        return Err(invalid("Expect only one trace level 'OFF' is specified".into()));
                    }
                    let on = values.iter().any(|l| l != "OFF");
                    let no_file = self.effective(model).get("trace_file").is_none_or(|f| f.iter().all(String::is_empty));
                    if on && file_needed && no_file {
                        return Err(invalid("Attempting to set invalid trace setting :trace file name is not given".into()));
                    }
                }
                ("trace_rate", Some(rate)) => match parse_unsigned(&key, rate)? {
                    0 => return Err(invalid("Attempting to set invalid trace setting :sample rate must be non-zero".into())),
                    rate => value.value = vec![rate.to_string()],
                },
                ("trace_count", Some(text)) => {
                    let count = parse_leading(&key, text)?;
                    if count > i64::from(i32::MAX) {
                        return Err(out_of_range(&key, -1, i64::from(i32::MAX), text));
                    }
                    if count < -1 {
                        return Err(invalid(format!("Unable to parse 'trace_count'. Expecting value >= -1, got: {text}")));
                    }
                    value.value = vec![count.to_string()];
                }
                ("log_frequency", Some(_)) if !file_needed => continue,
                ("log_frequency", Some(frequency)) => value.value = vec![parse_unsigned(&key, frequency)?.to_string()],
                ("trace_file" | "trace_level" | "trace_rate" | "trace_count" | "log_frequency", None) => {}
                _ => continue,
            }
            applied.insert(key, value);
        }
        Ok(applied)
    }

    /// Applies a checked update to `model`'s settings (`""`: the global ones). An empty value
    /// list clears a model's own value, or restores a global one's start-up value.
    pub fn apply(&mut self, model: &str, settings: HashMap<String, TraceInValue>) {
        for (key, value) in settings {
            if model.is_empty() {
                let values =
                    if value.value.is_empty() { self.initial.get(&key).cloned().unwrap_or_default() } else { value.value };
                self.values.insert(key, values);
            } else {
                let own = self.models.entry(model.to_string()).or_default();
                if value.value.is_empty() {
                    own.remove(&key);
                } else {
                    own.insert(key, value.value);
                }
            }
        }
        self.models.retain(|_, own| !own.is_empty());
    }

    /// The values in force for `model` (`""`: the global ones).
    pub fn effective(&self, model: &str) -> Values {
        let mut current = self.values.clone();
        if let Some(own) = self.models.get(model) {
            current.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        current
    }

    /// The models with values of their own.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The keys `model` set itself.
    pub fn own(&self, model: &str) -> Option<&Values> {
        self.models.get(model)
    }
}

/// The integer `value` starts with, as C++'s `std::stoll` reads it (Triton's parser): leading
/// blanks, a sign and digits; what follows is ignored (`"1.5"` is 1, `"5x"` is 5).
fn parse_leading(key: &str, value: &str) -> Result<i64, TraceError> {
    let text = value.trim_start();
    let digits_from = usize::from(text.starts_with(['-', '+']));
    let digits = text[digits_from..].bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(invalid(format!("Unable to parse '{key}', got: {value}")));
    }
    text[..digits_from + digits].parse::<i64>().map_err(|_| out_of_range(key, 0, i64::from(u32::MAX), value))
}

/// An unsigned 32-bit setting as Triton reads it: a negative number wraps (`"-1"` is
/// 4294967295), a larger one is out of range.
fn parse_unsigned(key: &str, value: &str) -> Result<u32, TraceError> {
    let n = parse_leading(key, value)?;
    if n > i64::from(u32::MAX) || n < -i64::from(u32::MAX) {
        return Err(out_of_range(key, 0, i64::from(u32::MAX), value));
    }
    Ok(n as u32)
}

fn out_of_range(key: &str, min: i64, max: i64, value: &str) -> TraceError {
    invalid(format!("Unable to parse '{key}', value is out of range [ {min}, {max} ], got: {value}"))
}

/// The first value of `key`, parsed (the check made sure it parses).
pub(super) fn number(values: &Values, key: &str) -> i64 {
    values.get(key).and_then(|v| v.first()).and_then(|v| v.parse().ok()).unwrap_or(0)
}
