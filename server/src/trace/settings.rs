//! TraceSetting's values, as Triton keeps them: global values, and per model the values set for
//! that model alone (the rest follow the global ones). Every value is a list of strings on the
//! wire (`trace_level` may hold two levels). The tracer ([`super::Tracer`]) compiles these into
//! the sampling policies after every change.

use std::collections::HashMap;

use tritium_proto::inference::trace_setting_request::SettingValue as TraceInValue;

use crate::error::ServerError;

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

fn invalid(reason: String) -> ServerError {
    ServerError::InvalidArgument { reason }
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
    ) -> Result<HashMap<String, TraceInValue>, ServerError> {
        let mut applied = HashMap::new();
        for (key, value) in update {
            let values = &value.value;
            if values.len() > 1 && key != "trace_level" && TRACE_DEFAULTS.iter().any(|(k, _)| *k == key) {
                return Err(invalid(format!("expect only 1 value for '{key}'")));
            }
            let first = values.first().map(String::as_str);
            match (key.as_str(), first) {
                ("trace_file", Some(_)) => {
                    return Err(ServerError::Unsupported {
                        what: "trace file location can not be updated through network protocol".into(),
                    });
                }
                ("trace_level", Some(_)) => {
                    if !values.iter().all(|l| matches!(l.as_str(), "OFF" | "TIMESTAMPS" | "TENSORS")) {
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
                ("trace_rate", Some(rate)) => match parse_bounded(&key, rate, 0, i64::from(u32::MAX))? {
                    0 => return Err(invalid("Attempting to set invalid trace setting :sample rate must be non-zero".into())),
                    _ => {}
                },
                ("trace_count", Some(count)) => {
                    if parse_bounded(&key, count, i64::MIN, i64::from(i32::MAX))? < -1 {
                        return Err(invalid(format!("Unable to parse 'trace_count'. Expecting value >= -1, got: {count}")));
                    }
                }
                ("log_frequency", Some(_)) if !file_needed => continue,
                ("log_frequency", Some(frequency)) => {
                    parse_bounded(&key, frequency, 0, i64::from(u32::MAX))?;
                }
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

/// `value` as an integer within `min..=max`, refused in Triton's words.
fn parse_bounded(key: &str, value: &str, min: i64, max: i64) -> Result<i64, ServerError> {
    let n: i64 = value.parse().map_err(|_| invalid(format!("Unable to parse '{key}', got: {value}")))?;
    if n > max || (min >= 0 && n < min) {
        return Err(invalid(format!("Unable to parse '{key}', value is out of range [ {}, {max} ], got: {value}", min.max(-1))));
    }
    Ok(n)
}

/// The first value of `key`, parsed (the check made sure it parses).
pub(super) fn number(values: &Values, key: &str) -> i64 {
    values.get(key).and_then(|v| v.first()).and_then(|v| v.parse().ok()).unwrap_or(0)
}
