//! LogSettings, which changes the log level at run time. TraceSetting lives with the tracer
//! (`crate::trace`).

use std::collections::HashMap;

use tritium_proto::inference::log_settings_request::SettingValue as LogInValue;
use tritium_proto::inference::log_settings_request::setting_value::ParameterChoice as LogIn;
use tritium_proto::inference::log_settings_response::SettingValue as LogOutValue;
use tritium_proto::inference::log_settings_response::setting_value::ParameterChoice as LogOut;

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
