//! LogSettings (which really changes the log level) and TraceSetting (settings kept and reported;
//! request tracing itself is not implemented, so `trace` is not advertised).

use std::collections::HashMap;

use tritium_proto::inference::log_settings_request::SettingValue as LogInValue;
use tritium_proto::inference::log_settings_request::setting_value::ParameterChoice as LogIn;
use tritium_proto::inference::log_settings_response::SettingValue as LogOutValue;
use tritium_proto::inference::log_settings_response::setting_value::ParameterChoice as LogOut;
use tritium_proto::inference::trace_setting_request::SettingValue as TraceInValue;
use tritium_proto::inference::trace_setting_response::SettingValue as TraceOutValue;

use crate::error::ServerError;
use crate::logging::{LogControl, LogState};

fn invalid(reason: String) -> ServerError {
    ServerError::InvalidArgument { reason }
}

/// Applies a LogSettings update (an empty one only reads) and returns the settings now in force.
pub fn update_log_settings(
    control: &LogControl,
    settings: HashMap<String, LogInValue>,
) -> Result<HashMap<String, LogOutValue>, ServerError> {
    let mut next = control.current();
    for (key, value) in settings {
        let choice = value.parameter_choice.ok_or_else(|| invalid(format!("log setting '{key}' has no value")))?;
        match (key.as_str(), choice) {
            ("log_info", LogIn::BoolParam(b)) => next.info = b,
            ("log_warning", LogIn::BoolParam(b)) => next.warning = b,
            ("log_error", LogIn::BoolParam(b)) => next.error = b,
            ("log_verbose_level", LogIn::Uint32Param(level)) => next.verbose_level = level,
            ("log_format", LogIn::StringParam(format)) if format == "default" || format == "ISO8601" => {
                next.format = format;
            }
            ("log_format", LogIn::StringParam(format)) => {
                return Err(invalid(format!("invalid log_format '{format}', expected 'default' or 'ISO8601'")));
            }
            ("log_file", LogIn::StringParam(file)) if file.is_empty() => {}
            ("log_file", LogIn::StringParam(_)) => {
                return Err(ServerError::Unsupported { what: "log_file is not supported: tritium logs to stderr".to_string() });
            }
            ("log_info" | "log_warning" | "log_error", _) => {
                return Err(invalid(format!("log setting '{key}' expects a bool_param")));
            }
            ("log_verbose_level", _) => return Err(invalid(format!("log setting '{key}' expects a uint32_param"))),
            ("log_format" | "log_file", _) => return Err(invalid(format!("log setting '{key}' expects a string_param"))),
            _ => return Err(invalid(format!("unknown log setting '{key}'"))),
        }
    }
    control.apply(next).map_err(ServerError::Internal)?;
    Ok(log_settings(&control.current()))
}

fn log_settings(state: &LogState) -> HashMap<String, LogOutValue> {
    let value = |choice| LogOutValue { parameter_choice: Some(choice) };
    HashMap::from([
        ("log_file".to_string(), value(LogOut::StringParam(String::new()))),
        ("log_info".to_string(), value(LogOut::BoolParam(state.info))),
        ("log_warning".to_string(), value(LogOut::BoolParam(state.warning))),
        ("log_error".to_string(), value(LogOut::BoolParam(state.error))),
        ("log_verbose_level".to_string(), value(LogOut::Uint32Param(state.verbose_level))),
        ("log_format".to_string(), value(LogOut::StringParam(state.format.clone()))),
    ])
}

const TRACE_DEFAULTS: &[(&str, &str)] = &[
    ("trace_file", ""),
    ("trace_level", "OFF"),
    ("trace_rate", "1000"),
    ("trace_count", "-1"),
    ("log_frequency", "0"),
    ("trace_mode", "triton"),
];

/// Trace settings: global values, and per model the values set for it alone (the rest follow
/// the global ones). An update sets keys; an empty value list clears a model's own value, or
/// restores a global one's default.
#[derive(Debug)]
pub struct TraceSettings {
    values: HashMap<String, Vec<String>>,
    models: HashMap<String, HashMap<String, Vec<String>>>,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            values: TRACE_DEFAULTS.iter().map(|(k, v)| (k.to_string(), vec![v.to_string()])).collect(),
            models: HashMap::new(),
        }
    }
}

impl TraceSettings {
    /// Applies `settings` to `model`'s settings (`""`: the global ones) and returns that
    /// model's settings now in force.
    pub fn update(
        &mut self,
        model: &str,
        settings: HashMap<String, TraceInValue>,
    ) -> Result<HashMap<String, TraceOutValue>, ServerError> {
        // Validate everything first: a rejected update changes nothing.
        for (key, value) in &settings {
            if !TRACE_DEFAULTS.iter().any(|(k, _)| k == key) {
                return Err(invalid(format!("unknown trace setting '{key}'")));
            }
            if key == "trace_level" {
                for level in &value.value {
                    if !matches!(level.as_str(), "OFF" | "TIMESTAMPS" | "TENSORS") {
                        return Err(invalid(format!("invalid trace_level '{level}', expected OFF, TIMESTAMPS or TENSORS")));
                    }
                }
            }
            if matches!(key.as_str(), "trace_rate" | "trace_count" | "log_frequency") {
                for number in &value.value {
                    if number.parse::<i64>().is_err() {
                        return Err(invalid(format!("Unable to parse '{key}', got: {number}")));
                    }
                }
            }
        }
        for (key, value) in settings {
            if model.is_empty() {
                let default = TRACE_DEFAULTS.iter().find(|(k, _)| *k == key).map_or("", |(_, v)| v);
                let values = if value.value.is_empty() { vec![default.to_string()] } else { value.value };
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
        let mut current = self.values.clone();
        if let Some(own) = self.models.get(model) {
            current.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(current.into_iter().map(|(k, value)| (k, TraceOutValue { value })).collect())
    }
}
