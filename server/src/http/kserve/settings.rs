//! Trace and log settings over HTTP (`/v2/trace/setting`, `/v2/models/{m}/trace/setting`,
//! `/v2/logging`): the JSON read as Triton's HTTP server reads it (unknown keys and nulls
//! ignored where it ignores them, its type errors and refusals), then applied through the core
//! functions the gRPC handlers of the same settings call ([`crate::admin`]).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};
use tritium_proto::inference::log_settings_request::SettingValue as LogValue;
use tritium_proto::inference::log_settings_request::setting_value::ParameterChoice as LogChoice;
use tritium_proto::inference::log_settings_response::setting_value::ParameterChoice as LogOut;
use tritium_proto::inference::trace_setting_request::SettingValue as TraceValue;
use tritium_proto::inference::{LogSettingsRequest, TraceSettingRequest};

use super::KserveState;
use super::admin::{json_body, json_object};
use super::reply::{self, HttpError, HttpResult};
use crate::admin;

const TRACE_LEVELS: &[&str] = &["OFF", "TIMESTAMPS", "TENSORS"];

/// The trace settings an update asks for, as Triton's HTTP server takes them.
/// `file_needed`: the trace mode writes Triton's trace file (OpenTelemetry's exports spans instead).
fn trace_update_of(update: Map<String, Value>, current_file: &str, file_needed: bool) -> Result<HashMap<String, TraceValue>, HttpError> {
    let mut settings = HashMap::new();
    for (key, value) in update {
        let values = match (key.as_str(), value) {
            ("trace_file", Value::Null) => Vec::new(),
            ("trace_file", _) => {
                return Err(HttpError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "trace file location can not be updated through network protocol",
                ));
            }
            ("trace_level", Value::Null) => Vec::new(),
            ("trace_level", Value::Array(levels)) => {
                let levels: Vec<String> = levels
                    .into_iter()
                    .map(|level| match level {
                        Value::String(level) => Ok(level),
                        _ => Err(HttpError::wrong_kind(None, "string")),
                    })
                    .collect::<Result<_, _>>()?;
                // Levels Triton does not know leave the setting as it is.
                if !levels.iter().all(|l| TRACE_LEVELS.contains(&l.as_str())) {
                    continue;
                }
                if levels.iter().any(|l| l != "OFF") && file_needed && current_file.is_empty() {
                    return Err(HttpError::bad_request("Attempting to set invalid trace setting :trace file name is not given"));
                }
                levels
            }
            ("trace_level", _) => return Err(HttpError::wrong_kind(None, "array")),
            ("trace_rate" | "trace_count" | "log_frequency" | "trace_mode", Value::Null) => Vec::new(),
            ("trace_rate" | "trace_count" | "log_frequency" | "trace_mode", Value::String(s)) => vec![s],
            ("trace_rate" | "trace_count" | "log_frequency" | "trace_mode", _) => {
                return Err(HttpError::wrong_kind(None, "string"));
            }
            // Triton ignores the keys it does not know.
            _ => continue,
        };
        settings.insert(key, TraceValue { value: values });
    }
    Ok(settings)
}

fn render_trace(settings: HashMap<String, tritium_proto::inference::trace_setting_response::SettingValue>) -> Value {
    // Triton's key order.
    const ORDER: &[&str] =
        &["trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file", "trace_mode", "url", "resource"];
    let mut settings: Vec<_> = settings.into_iter().collect();
    settings.sort_by_key(|(key, _)| (ORDER.iter().position(|k| k == key).unwrap_or(ORDER.len()), key.clone()));
    let rendered: Map<String, Value> = settings
        .into_iter()
        .map(|(key, value)| {
            let rendered = if key == "trace_level" {
                Value::from(value.value)
            } else {
                Value::from(value.value.into_iter().next().unwrap_or_default())
            };
            (key, rendered)
        })
        .collect();
    Value::Object(rendered)
}

async fn trace(state: &KserveState, model_name: String, update: Option<Value>) -> HttpResult {
    if !model_name.is_empty() && state.server.repository.model(&model_name).is_none() {
        return Err(HttpError::bad_request(format!("Request for unknown model : {model_name}")));
    }
    let settings = match update {
        None => HashMap::new(),
        Some(update) => {
            let current = TraceSettingRequest { settings: HashMap::new(), model_name: model_name.clone() };
            let current = admin::trace_setting(&state.server, current)?.settings;
            let file = current.get("trace_file").and_then(|v| v.value.first()).cloned().unwrap_or_default();
            let file_needed = current.get("trace_mode").and_then(|v| v.value.first()).is_none_or(|mode| mode != "opentelemetry");
            // Triton reads an array body as no update at all.
            let update = if update.is_array() { Map::new() } else { json_object(update)? };
            trace_update_of(update, &file, file_needed)?
        }
    };
    let answer = admin::trace_setting(&state.server, TraceSettingRequest { settings, model_name }).map_err(|e| {
        // Triton's HTTP server words this one refusal without the space its gRPC one has.
        match e {
            crate::ServerError::Trace(tritium_trace::TraceError::InvalidArgument { reason })
                if reason.contains("Expecting value >= -1, got: ") =>
            {
                crate::ServerError::InvalidArgument { reason: reason.replacen("got: ", "got:", 1) }
            }
            other => other,
        }
    })?;
    Ok(reply::json(&render_trace(answer.settings)))
}

pub(super) async fn trace_get(State(state): State<KserveState>) -> HttpResult {
    trace(&state, String::new(), None).await
}

pub(super) async fn trace_update(State(state): State<KserveState>, headers: HeaderMap, body: Body) -> HttpResult {
    let update = json_body(&state, &headers, body, false).await?;
    trace(&state, String::new(), Some(update)).await
}

pub(super) async fn model_trace_get(State(state): State<KserveState>, Path(model): Path<String>) -> HttpResult {
    trace(&state, model, None).await
}

pub(super) async fn model_trace_update(
    State(state): State<KserveState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult {
    let update = json_body(&state, &headers, body, false).await?;
    trace(&state, model, Some(update)).await
}

/// The log settings an update asks for, as Triton's HTTP server takes them.
fn log_update_of(update: Map<String, Value>) -> Result<HashMap<String, LogValue>, HttpError> {
    let mut settings = HashMap::new();
    for (key, value) in update {
        let choice = match (key.as_str(), value) {
            (_, Value::Null) => continue,
            ("log_file", Value::String(file)) if file.is_empty() => LogChoice::StringParam(file),
            ("log_file", Value::String(_)) => {
                return Err(HttpError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "log file location can not be updated through network protocol",
                ));
            }
            ("log_info" | "log_warning" | "log_error", Value::Bool(b)) => LogChoice::BoolParam(b),
            ("log_info" | "log_warning" | "log_error", _) => return Err(HttpError::wrong_kind(None, "boolean")),
            ("log_verbose_level", value) => match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(level) => LogChoice::Uint32Param(level),
                None => return Err(HttpError::wrong_kind(None, "unsigned-integer")),
            },
            ("log_format", Value::String(format)) if format == "default" || format == "ISO8601" => LogChoice::StringParam(format),
            ("log_format", Value::String(format)) => {
                return Err(HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("invalid argument for --log_format, got: {format}"),
                ));
            }
            ("log_file" | "log_format", _) => return Err(HttpError::wrong_kind(None, "string")),
            // Triton ignores the keys it does not know.
            _ => continue,
        };
        settings.insert(key, LogValue { parameter_choice: Some(choice) });
    }
    Ok(settings)
}

async fn logging(state: &KserveState, settings: HashMap<String, LogValue>) -> HttpResult {
    let answer = admin::log_settings(&state.server, LogSettingsRequest { settings })?;
    let rendered: Map<String, Value> = answer
        .settings
        .into_iter()
        .filter_map(|(key, value)| {
            let rendered = match value.parameter_choice? {
                LogOut::BoolParam(b) => Value::from(b),
                LogOut::Uint32Param(n) => Value::from(n),
                LogOut::StringParam(s) => Value::from(s),
            };
            Some((key, rendered))
        })
        .collect();
    Ok(reply::json(&Value::Object(rendered)))
}

pub(super) async fn logging_get(State(state): State<KserveState>) -> HttpResult {
    logging(&state, HashMap::new()).await
}

pub(super) async fn logging_update(State(state): State<KserveState>, headers: HeaderMap, body: Body) -> HttpResult {
    let update = json_body(&state, &headers, body, false).await?;
    logging(&state, log_update_of(json_object(update)?)?).await
}
