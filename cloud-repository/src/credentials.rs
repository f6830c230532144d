//! Credentials and endpoints, read as Triton and the cloud SDKs read them: Triton's
//! `TRITON_CLOUD_CREDENTIAL_PATH` JSON first (the entry whose key is the longest prefix of the
//! location), then the environment (`AWS_*`, `GOOGLE_APPLICATION_CREDENTIALS`,
//! `STORAGE_EMULATOR_HOST`, `AZURE_STORAGE_*`, `AZURITE_BLOB_STORAGE_URL`), then `~/.aws`
//! (`credentials` and `config`, profile `AWS_PROFILE` or `default`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::location::Location;

/// The variables this crate reads, captured once (the server's config module calls
/// [`CloudEnvironment::from_process`]; tests build one by hand).
pub const VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "STORAGE_EMULATOR_HOST",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURITE_BLOB_STORAGE_URL",
    "TRITON_CLOUD_CREDENTIAL_PATH",
    "HOME",
];

/// Files read here (credentials, profiles) are small; a larger one is refused.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Clone, Default)]
pub struct CloudEnvironment {
    vars: BTreeMap<String, String>,
}

impl std::fmt::Debug for CloudEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the values hold secrets.
        f.debug_struct("CloudEnvironment").field("set", &self.vars.keys().collect::<Vec<_>>()).finish()
    }
}

impl CloudEnvironment {
    /// The process's values of [`VARIABLES`].
    pub fn from_process() -> CloudEnvironment {
        CloudEnvironment::from_vars(VARIABLES.iter().filter_map(|name| std::env::var(name).ok().map(|v| (name.to_string(), v))))
    }

    /// From name/value pairs; empty values count as unset.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> CloudEnvironment {
        CloudEnvironment { vars: vars.into_iter().filter(|(_, v)| !v.is_empty()).collect() }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// What an S3 client needs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: String,
    pub key_id: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
}

/// What a GCS client needs: an emulator's base URL (no credentials then), or a credentials file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct GcsSettings {
    pub emulator: Option<String>,
    pub credentials_path: Option<String>,
}

/// What an Azure Blob client needs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AzureSettings {
    pub key: Option<String>,
    /// Azurite's blob endpoint (`AZURITE_BLOB_STORAGE_URL`), path-style.
    pub emulator: Option<String>,
}

impl CloudEnvironment {
    /// Triton's credential file's entry for `location` under `scheme` (`s3`, `gs`, `as`): the
    /// entry whose key is the longest prefix of the location's URL.
    fn triton_entry(&self, scheme: &str, location: &Location) -> Result<Option<serde_json::Value>, String> {
        let Some(path) = self.var("TRITON_CLOUD_CREDENTIAL_PATH") else { return Ok(None) };
        let text = read_small(Path::new(path)).map_err(|e| format!("TRITON_CLOUD_CREDENTIAL_PATH: {e}"))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| "TRITON_CLOUD_CREDENTIAL_PATH: the file is not valid JSON".to_string())?;
        let Some(entries) = json.get(scheme).and_then(|v| v.as_object()) else { return Ok(None) };
        let best = entries.iter().filter(|(prefix, _)| location.url.starts_with(prefix.as_str())).max_by_key(|(p, _)| p.len());
        Ok(best.map(|(_, v)| v.clone()))
    }

    pub fn s3(&self, location: &Location, endpoint: Option<&str>) -> Result<S3Settings, String> {
        let profile = self.aws_profile();
        let mut settings = S3Settings {
            endpoint: endpoint.map(str::to_string).or_else(|| self.var("AWS_ENDPOINT_URL").map(str::to_string)),
            region: String::new(),
            ..S3Settings::default()
        };
        let entry = self.triton_entry("s3", location)?;
        let field = |name: &str| {
            entry.as_ref().and_then(|e| e.get(name)).and_then(|v| v.as_str()).filter(|v| !v.is_empty()).map(str::to_string)
        };
        if field("key_id").is_some() || field("secret_key").is_some() {
            settings.key_id = field("key_id");
            settings.secret_key = field("secret_key");
            settings.session_token = field("session_token");
        } else if self.var("AWS_ACCESS_KEY_ID").is_some() || self.var("AWS_SECRET_ACCESS_KEY").is_some() {
            settings.key_id = self.var("AWS_ACCESS_KEY_ID").map(str::to_string);
            settings.secret_key = self.var("AWS_SECRET_ACCESS_KEY").map(str::to_string);
            settings.session_token = self.var("AWS_SESSION_TOKEN").map(str::to_string);
        } else {
            let profile = field("profile").unwrap_or(profile.clone());
            if let Some(section) = self.aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials", &profile)? {
                settings.key_id = section.get("aws_access_key_id").cloned();
                settings.secret_key = section.get("aws_secret_access_key").cloned();
                settings.session_token = section.get("aws_session_token").cloned();
            }
        }
        let config = self.aws_file("AWS_CONFIG_FILE", "config", &format!("profile {profile}"))?.or(if profile == "default" {
            self.aws_file("AWS_CONFIG_FILE", "config", "default")?
        } else {
            None
        });
        let from_config = |key: &str| config.as_ref().and_then(|c| c.get(key)).cloned();
        settings.region = field("region")
            .or_else(|| self.var("AWS_DEFAULT_REGION").map(str::to_string))
            .or_else(|| self.var("AWS_REGION").map(str::to_string))
            .or_else(|| from_config("region"))
            .unwrap_or_else(|| "us-east-1".to_string());
        if settings.endpoint.is_none() {
            settings.endpoint = from_config("endpoint_url");
        }
        if settings.key_id.is_none() && settings.secret_key.is_none() {
            settings.key_id = from_config("aws_access_key_id");
            settings.secret_key = from_config("aws_secret_access_key");
            settings.session_token = from_config("aws_session_token");
        }
        Ok(settings)
    }

    pub fn gcs(&self, location: &Location) -> Result<GcsSettings, String> {
        let emulator = self.var("STORAGE_EMULATOR_HOST").map(|host| {
            let host = host.trim_end_matches('/');
            if host.contains("://") { host.to_string() } else { format!("http://{host}") }
        });
        let from_file = self.triton_entry("gs", location)?.and_then(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_string));
        let credentials_path = from_file.or_else(|| self.var("GOOGLE_APPLICATION_CREDENTIALS").map(str::to_string));
        Ok(GcsSettings { emulator, credentials_path })
    }

    pub fn azure(&self, location: &Location, account: &str) -> Result<AzureSettings, String> {
        let entry = self.triton_entry("as", location)?;
        let from_file = entry.as_ref().and_then(|e| e.get("account_key")).and_then(|v| v.as_str()).filter(|v| !v.is_empty());
        let named = entry.as_ref().and_then(|e| e.get("account_str")).and_then(|v| v.as_str()).filter(|v| !v.is_empty());
        let key = match from_file {
            Some(key) => {
                if named.is_some_and(|n| n != account) {
                    return Err(format!(
                        "TRITON_CLOUD_CREDENTIAL_PATH names storage account '{}', not '{account}'",
                        named.unwrap_or("")
                    ));
                }
                Some(key.to_string())
            }
            // AZURE_STORAGE_KEY belongs to AZURE_STORAGE_ACCOUNT (when that is set).
            None if self.var("AZURE_STORAGE_ACCOUNT").is_none_or(|a| a == account) => {
                self.var("AZURE_STORAGE_KEY").map(str::to_string)
            }
            None => None,
        };
        Ok(AzureSettings { key, emulator: self.var("AZURITE_BLOB_STORAGE_URL").map(str::to_string) })
    }

    fn aws_profile(&self) -> String {
        self.var("AWS_PROFILE").unwrap_or("default").to_string()
    }

    /// One section of an AWS shared file (`credentials` or `config`), if the file and section exist.
    fn aws_file(&self, variable: &str, file: &str, section: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        let path = match (self.var(variable), self.var("HOME")) {
            (Some(path), _) => PathBuf::from(path),
            (None, Some(home)) => Path::new(home).join(".aws").join(file),
            (None, None) => return Ok(None),
        };
        match read_small(&path) {
            Ok(text) => Ok(ini_section(&text, section)),
            Err(e) if !path.exists() => {
                let _ = e;
                Ok(None)
            }
            Err(e) => Err(format!("~/.aws/{file}: {e}")),
        }
    }
}

/// The secrets among settings, to scrub from any text that leaves this crate.
pub fn secrets_of(values: &[Option<&String>]) -> Vec<String> {
    values.iter().flatten().filter(|v| v.len() >= 4).map(|v| v.to_string()).collect()
}

fn read_small(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read '{}': {}", path.display(), e.kind()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("'{}' is larger than {MAX_FILE_BYTES} bytes", path.display()));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read '{}': {}", path.display(), e.kind()))
}

/// The `key = value` pairs of `[section]` in an INI text (keys lower-cased), if it has one.
fn ini_section(text: &str, section: &str) -> Option<BTreeMap<String, String>> {
    let mut current: Option<&str> = None;
    let mut found: Option<BTreeMap<String, String>> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim());
            if current == Some(section) {
                found.get_or_insert_with(BTreeMap::new);
            }
            continue;
        }
        if current == Some(section)
            && let Some((key, value)) = line.split_once('=')
            && let Some(map) = found.as_mut()
        {
            map.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::parse;

    fn env(pairs: &[(&str, &str)]) -> CloudEnvironment {
        CloudEnvironment::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn environment_variables_give_s3_credentials() {
        let location = parse("s3://bucket/models").unwrap();
        let s3 = env(&[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "SECRET"), ("AWS_DEFAULT_REGION", "eu-west-1")])
            .s3(&location, None)
            .unwrap();
        assert_eq!(
            (s3.key_id.as_deref(), s3.secret_key.as_deref(), s3.region.as_str()),
            (Some("AKID"), Some("SECRET"), "eu-west-1")
        );
        assert!(format!("{:?}", env(&[("AWS_SECRET_ACCESS_KEY", "SECRET")])).contains("AWS_SECRET_ACCESS_KEY"));
        assert!(!format!("{:?}", env(&[("AWS_SECRET_ACCESS_KEY", "SECRET")])).contains("SECRET\""));
    }

    #[test]
    fn aws_shared_files_give_a_profile() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(
            home.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[work]\naws_access_key_id=W\naws_secret_access_key=WS\n",
        )
        .unwrap();
        std::fs::write(
            home.path().join(".aws/config"),
            "[profile work]\nregion = ap-south-1\nendpoint_url = http://127.0.0.1:9\n",
        )
        .unwrap();
        let home = home.path().to_str().unwrap();
        let location = parse("s3://bucket/models").unwrap();
        let s3 = env(&[("HOME", home), ("AWS_PROFILE", "work")]).s3(&location, None).unwrap();
        assert_eq!((s3.key_id.as_deref(), s3.secret_key.as_deref()), (Some("W"), Some("WS")));
        assert_eq!((s3.region.as_str(), s3.endpoint.as_deref()), ("ap-south-1", Some("http://127.0.0.1:9")));
        let default = env(&[("HOME", home)]).s3(&location, None).unwrap();
        assert_eq!((default.key_id.as_deref(), default.region.as_str()), (Some("D"), "us-east-1"));
    }

    #[test]
    fn triton_credential_file_takes_the_longest_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds.json");
        std::fs::write(
            &file,
            r#"{"s3": {"": {"key_id": "A", "secret_key": "AS", "region": "r1"},
                       "s3://bucket-two": {"key_id": "B", "secret_key": "BS", "region": "r2", "session_token": "T"}},
                "gs": {"": "/any.json", "gs://gcs-two": "/two.json"},
                "as": {"": {"account_str": "acct", "account_key": "K"}}}"#,
        )
        .unwrap();
        let vars = env(&[("TRITON_CLOUD_CREDENTIAL_PATH", file.to_str().unwrap()), ("AWS_ACCESS_KEY_ID", "ENV")]);
        let one = vars.s3(&parse("s3://bucket-one/x").unwrap(), None).unwrap();
        assert_eq!((one.key_id.as_deref(), one.region.as_str(), one.session_token.as_deref()), (Some("A"), "r1", None));
        let two = vars.s3(&parse("s3://bucket-two/x").unwrap(), None).unwrap();
        assert_eq!((two.key_id.as_deref(), two.region.as_str(), two.session_token.as_deref()), (Some("B"), "r2", Some("T")));
        assert_eq!(vars.gcs(&parse("gs://gcs-two/m").unwrap()).unwrap().credentials_path.as_deref(), Some("/two.json"));
        let azure = parse("as://acct/container").unwrap();
        assert_eq!(vars.azure(&azure, "acct").unwrap().key.as_deref(), Some("K"));
        assert!(vars.azure(&parse("as://other/container").unwrap(), "other").is_err());
    }

    #[test]
    fn emulators_and_azure_accounts() {
        let gcs = env(&[("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")]).gcs(&parse("gs://bucket").unwrap()).unwrap();
        assert_eq!(gcs.emulator.as_deref(), Some("http://127.0.0.1:4443"));
        let location = parse("as://acct/container").unwrap();
        let other = env(&[("AZURE_STORAGE_ACCOUNT", "someone"), ("AZURE_STORAGE_KEY", "K")]);
        assert_eq!(other.azure(&location, "acct").unwrap().key, None);
        let same = env(&[("AZURE_STORAGE_ACCOUNT", "acct"), ("AZURE_STORAGE_KEY", "K")]);
        assert_eq!(same.azure(&location, "acct").unwrap().key.as_deref(), Some("K"));
    }
}
