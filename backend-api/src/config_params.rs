//! One typed reader of the settings a backend takes: a model config's `parameters` entries
//! ([`ConfigParams`]) and Triton's `--backend-config` values ([`BackendSettings`]). Each backend
//! reads its own keys through them, so a number, a size or a flag is parsed and worded one way
//! everywhere.

use std::collections::HashMap;
use std::str::FromStr;

use tritium_proto::inference::ModelConfig;

/// A `parameters { key: .. value { string_value: .. } }` entry of a model config, as text.
pub fn config_parameter<'c>(config: &'c ModelConfig, key: &str) -> Option<&'c str> {
    config.parameters.get(key).map(|p| p.string_value.as_str())
}

/// The parameters any model may carry to be served as a text model on the OpenAI door
/// (`openai_task`, its `tokenizer` file, its rows' `max_tokens`), whatever its backend.
pub const TEXT_MODEL_PARAMETERS: [&str; 3] = ["openai_task", "tokenizer", "max_tokens"];

/// Logs, at load, the config's `parameters` that neither the backend (`read`) nor the text-model
/// door reads: they do nothing, and a user who set one is told so instead of it vanishing.
pub fn warn_unread_parameters(model: &str, backend: &str, config: &ModelConfig, read: &[&str]) {
    let unread = unread_parameters(config, read);
    if !unread.is_empty() {
        tracing::warn!(
            model,
            "parameters {} of the config are read by no part of Tritium's {backend} backend: they do nothing here",
            unread.join(", ")
        );
    }
}

/// The config's parameter keys outside `read` and [`TEXT_MODEL_PARAMETERS`], sorted.
pub fn unread_parameters<'c>(config: &'c ModelConfig, read: &[&str]) -> Vec<&'c str> {
    let mut unread: Vec<&str> = config
        .parameters
        .keys()
        .map(String::as_str)
        .filter(|key| !read.contains(key) && !TEXT_MODEL_PARAMETERS.contains(key))
        .collect();
    unread.sort_unstable();
    unread
}

/// Typed reads of a model config's parameters; an empty or blank value counts as absent.
#[derive(Debug, Clone, Copy)]
pub struct ConfigParams<'c> {
    config: &'c ModelConfig,
}

impl<'c> ConfigParams<'c> {
    pub fn of(config: &'c ModelConfig) -> ConfigParams<'c> {
        ConfigParams { config }
    }

    /// The value of `key`, trimmed, if it is set and not blank.
    pub fn text(&self, key: &str) -> Option<&'c str> {
        config_parameter(self.config, key).map(str::trim).filter(|value| !value.is_empty())
    }

    /// A whole number (or any type that parses from text), `default` when absent.
    pub fn number<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.text(key) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| format!("parameter '{key}' must be a whole number, not '{text}'")),
        }
    }

    /// `true`/`false` (also `on`/`off`, `1`/`0`, any case), `default` when absent.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.text(key) {
            None => Ok(default),
            Some(text) => parse_flag(text).ok_or_else(|| format!("parameter '{key}' must be true or false, not '{text}'")),
        }
    }
}

fn parse_flag(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" => Some(true),
        "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Triton's `--backend-config=<backend>,<setting>=<value>` (one backend) and
/// `--backend-config=<setting>=<value>` (every backend); a backend's own value wins over the
/// global one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendSettings {
    global: HashMap<String, String>,
    per_backend: HashMap<String, HashMap<String, String>>,
}

impl BackendSettings {
    /// Parses the flag's values, with Triton's wording for a malformed one.
    pub fn parse(values: &[String]) -> Result<BackendSettings, String> {
        let mut settings = BackendSettings::default();
        for value in values {
            let bad = || format!("--backend-config option format is '<backend name>,<setting>=<value>'. Got {value}");
            let (backend, setting) = match value.split_once(',') {
                Some(("", _)) => {
                    return Err(format!(
                        "No backend specified. --backend-config option format is <backend name>,<setting>=<value> or \
                         <setting>=<value>. Got {value}"
                    ));
                }
                Some((backend, setting)) => (Some(backend), setting),
                None => (None, value.as_str()),
            };
            let (key, setting_value) = setting.split_once('=').ok_or_else(bad)?;
            if key.is_empty() || setting_value.is_empty() {
                return Err(bad());
            }
            let target = match backend {
                Some(backend) => settings.per_backend.entry(backend.to_string()).or_default(),
                None => &mut settings.global,
            };
            target.insert(key.to_string(), setting_value.to_string());
        }
        Ok(settings)
    }

    /// `backend`'s value of `key`, else the global one.
    pub fn get(&self, backend: &str, key: &str) -> Option<&str> {
        self.per_backend.get(backend).and_then(|settings| settings.get(key)).or_else(|| self.global.get(key)).map(String::as_str)
    }

    /// `backend`'s `key` as a whole number, `default` when unset; Triton's wording when it is not one.
    pub fn number<T: FromStr>(&self, backend: &str, key: &str, default: T) -> Result<T, String> {
        Ok(self.optional_number(backend, key)?.unwrap_or(default))
    }

    /// `backend`'s `key` as a whole number, `None` when unset, for a backend whose bounds depend on
    /// whether it was given.
    pub fn optional_number<T: FromStr>(&self, backend: &str, key: &str) -> Result<Option<T>, String> {
        self.get(backend, key)
            .map(|value| value.trim().parse().map_err(|_| format!("failed to convert '{value}' to integral number")))
            .transpose()
    }

    /// `backend`'s `key` as a flag, `default` when unset; Triton's wording when it is not one.
    pub fn flag(&self, backend: &str, key: &str, default: bool) -> Result<bool, String> {
        match self.get(backend, key) {
            None => Ok(default),
            Some(value) => {
                parse_flag(value.trim()).ok_or_else(|| format!("parameter '{key}': failed to convert '{value}' to boolean"))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tritium_proto::inference::ModelParameter;

    use super::*;

    fn config(entries: &[(&str, &str)]) -> ModelConfig {
        let mut config = ModelConfig::default();
        for (key, value) in entries {
            config.parameters.insert(key.to_string(), ModelParameter { string_value: value.to_string() });
        }
        config
    }

    #[test]
    fn unread_parameters_leave_out_the_backends_and_the_text_doors() {
        let config = config(&[("model_path", "m"), ("openai_task", "score"), ("gpu_mem_limit", "1"), ("b", "x")]);
        assert_eq!(unread_parameters(&config, &["model_path"]), ["b", "gpu_mem_limit"]);
        assert!(unread_parameters(&config, &["model_path", "gpu_mem_limit", "b"]).is_empty());
    }

    #[test]
    fn config_parameters_read_typed_with_defaults() {
        let config = config(&[("n", " 12 "), ("blank", "  "), ("on", "TRUE"), ("bad", "lots")]);
        let params = ConfigParams::of(&config);
        assert_eq!(params.number("n", 1usize).unwrap(), 12);
        assert_eq!(params.number("blank", 7usize).unwrap(), 7);
        assert_eq!(params.number("absent", 7usize).unwrap(), 7);
        assert!(params.flag("on", false).unwrap());
        assert_eq!(params.number::<usize>("bad", 1).unwrap_err(), "parameter 'bad' must be a whole number, not 'lots'");
        assert_eq!(params.flag("bad", true).unwrap_err(), "parameter 'bad' must be true or false, not 'lots'");
    }

    fn settings(values: &[&str]) -> Result<BackendSettings, String> {
        BackendSettings::parse(&values.iter().map(|v| v.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn a_backends_own_setting_wins_over_the_global_one() {
        let settings = settings(&["onnxruntime,default-max-batch-size=8", "default-max-batch-size=2", "python,x=1"]).unwrap();
        assert_eq!(settings.get("onnxruntime", "default-max-batch-size"), Some("8"));
        assert_eq!(settings.get("python", "default-max-batch-size"), Some("2"));
        assert_eq!(settings.get("python", "x"), Some("1"));
        assert_eq!(settings.get("onnxruntime", "x"), None);
        assert_eq!(settings.number("python", "default-max-batch-size", 4u32).unwrap(), 2);
        assert_eq!(settings.number("python", "absent", 4u32).unwrap(), 4);
        assert!(settings.flag("python", "x", false).unwrap());
    }

    #[test]
    fn malformed_values_are_refused_in_tritons_words() {
        for bad in ["onnxruntime,novalue", "onnxruntime,=1", "onnxruntime,key="] {
            assert_eq!(
                settings(&[bad]).unwrap_err(),
                format!("--backend-config option format is '<backend name>,<setting>=<value>'. Got {bad}")
            );
        }
        assert!(settings(&[",a=1"]).unwrap_err().starts_with("No backend specified."));
        let lots = settings(&["python,n=lots"]).unwrap();
        assert_eq!(lots.number::<u64>("python", "n", 1).unwrap_err(), "failed to convert 'lots' to integral number");
    }
}
