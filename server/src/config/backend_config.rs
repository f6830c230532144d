//! Triton's `--backend-config=<backend>,<setting>=<value>` (one backend) and
//! `--backend-config=<setting>=<value>` (every backend); a backend's own value wins over the
//! global one.

use std::collections::HashMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendConfigs {
    global: HashMap<String, String>,
    per_backend: HashMap<String, HashMap<String, String>>,
}

impl BackendConfigs {
    /// Parses the flag's values, with Triton's wording for a malformed one.
    pub fn parse(values: &[String]) -> Result<BackendConfigs, String> {
        let mut configs = BackendConfigs::default();
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
                Some(backend) => configs.per_backend.entry(backend.to_string()).or_default(),
                None => &mut configs.global,
            };
            target.insert(key.to_string(), setting_value.to_string());
        }
        Ok(configs)
    }

    /// `backend`'s value of `key`, else the global one.
    pub fn get(&self, backend: &str, key: &str) -> Option<&str> {
        self.per_backend.get(backend).and_then(|settings| settings.get(key)).or_else(|| self.global.get(key)).map(String::as_str)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Result<BackendConfigs, String> {
        BackendConfigs::parse(&values.iter().map(|v| v.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn a_backends_own_setting_wins_over_the_global_one() {
        let configs =
            parse(&["default-max-batch-size=8", "onnxruntime,default-max-batch-size=2", "python,shm-default-byte-size=1"])
                .unwrap();
        assert_eq!(configs.get("onnxruntime", "default-max-batch-size"), Some("2"));
        assert_eq!(configs.get("python", "default-max-batch-size"), Some("8"));
        assert_eq!(configs.get("python", "shm-default-byte-size"), Some("1"));
        assert_eq!(configs.get("onnxruntime", "shm-default-byte-size"), None);
    }

    #[test]
    fn malformed_values_are_refused_in_tritons_words() {
        assert!(parse(&[",a=1"]).unwrap_err().starts_with("No backend specified."));
        for bad in ["onnxruntime,novalue", "onnxruntime,=1", "key="] {
            assert_eq!(
                parse(&[bad]).unwrap_err(),
                format!("--backend-config option format is '<backend name>,<setting>=<value>'. Got {bad}")
            );
        }
    }
}
