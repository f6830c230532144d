//! Reading model folders from repository paths: `<repo>/<name>/config.pbtxt` and numeric version
//! folders `<repo>/<name>/<n>/`, with a fingerprint for poll mode.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use tritium_proto::inference::ModelConfig;

use super::{RepositoryError, normalize_config, parse_config_json, parse_config_text, select_model_versions};

/// The config file Triton reads from each model folder.
pub const CONFIG_FILE: &str = "config.pbtxt";

/// One model folder in a repository.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSource {
    /// The folder name, which is the model's name.
    pub name: String,
    /// The model folder itself.
    pub dir: PathBuf,
    /// The contents of `config.pbtxt`, `None` when the folder has none (the caller decides whether
    /// the backend can do without). Invalid UTF-8 is replaced, so it fails at parse time.
    pub config_text: Option<String>,
    /// The version folders, ascending. Only canonical decimal names count ("3", not "03" or "v3"),
    /// as in Triton.
    pub versions: Vec<i64>,
    /// Changes when `config.pbtxt`'s content, the set of version folders, any entry directly inside
    /// a version folder (name, size, mtime) or any other visible entry of the model folder changes.
    /// Stable within one build of the server; compare it only between scans of one process.
    pub fingerprint: u64,
}

impl ModelSource {
    /// Where `config.pbtxt` is (or would be).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// The folder of one version.
    pub fn version_dir(&self, version: i64) -> PathBuf {
        self.dir.join(version.to_string())
    }

    /// Parses and normalizes `config.pbtxt`; `Ok(None)` when the folder has none.
    pub fn config(&self) -> Result<Option<ModelConfig>, RepositoryError> {
        let Some(text) = &self.config_text else { return Ok(None) };
        let config = parse_config_text(text).map_err(|e| e.with_model(&self.name))?;
        normalize_config(&self.name, config).map(Some)
    }

    /// The config a load should use: the JSON `override_json` (`RepositoryModelLoad`'s `config`
    /// parameter) when given, which replaces `config.pbtxt` entirely as in Triton, else [`config`].
    ///
    /// [`config`]: ModelSource::config
    pub fn config_with_override(&self, override_json: Option<&str>) -> Result<Option<ModelConfig>, RepositoryError> {
        match override_json {
            Some(json) => {
                let config = parse_config_json(json).map_err(|e| e.with_model(&self.name))?;
                normalize_config(&self.name, config).map(Some)
            }
            None => self.config(),
        }
    }

    /// The versions of this folder to serve under `config`'s version policy.
    pub fn select_versions(&self, config: &ModelConfig) -> Result<Vec<i64>, RepositoryError> {
        select_model_versions(&self.name, config.version_policy.as_ref(), &self.versions)
    }
}

/// Lists the model folders of every repository path, sorted by name.
///
/// A model is any visible directory (symlinks followed) directly under a repository; files and
/// hidden entries (`.git`) are skipped. A name in two repositories is an error, as is a
/// repository path that does not exist.
pub fn scan_repositories(paths: &[PathBuf]) -> Result<Vec<ModelSource>, RepositoryError> {
    let mut models: BTreeMap<String, ModelSource> = BTreeMap::new();
    for repository in paths {
        check_repository(repository)?;
        let entries = fs::read_dir(repository).map_err(|e| RepositoryError::io(repository, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| RepositoryError::io(repository, e))?;
            let Some(name) = visible_name(&entry.file_name()) else {
                continue;
            };
            let Some(model) = read_model(&entry.path(), &name)? else {
                continue;
            };
            insert_unique(&mut models, model)?;
        }
    }
    Ok(models.into_values().collect())
}

/// Reads the folder of model `name` from whichever repository has it; `None` when none does or
/// `name` is not a plain folder name (empty, hidden, or containing a path separator).
pub fn find_model(paths: &[PathBuf], name: &str) -> Result<Option<ModelSource>, RepositoryError> {
    if !is_plain_name(name) {
        return Ok(None);
    }
    let mut found: BTreeMap<String, ModelSource> = BTreeMap::new();
    for repository in paths {
        check_repository(repository)?;
        if let Some(model) = read_model(&repository.join(name), name)? {
            insert_unique(&mut found, model)?;
        }
    }
    Ok(found.into_values().next())
}

fn check_repository(path: &Path) -> Result<(), RepositoryError> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(RepositoryError::RepositoryNotFound { path: path.to_path_buf() }),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(RepositoryError::RepositoryNotFound { path: path.to_path_buf() }),
        Err(e) => Err(RepositoryError::io(path, e)),
    }
}

fn insert_unique(models: &mut BTreeMap<String, ModelSource>, model: ModelSource) -> Result<(), RepositoryError> {
    if let Some(first) = models.get(&model.name) {
        return Err(RepositoryError::DuplicateModel { name: model.name, first: first.dir.clone(), second: model.dir });
    }
    models.insert(model.name.clone(), model);
    Ok(())
}

/// Whether `name` can be a model folder's name: one plain, visible path component.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\']) && Path::new(name).file_name().is_some()
}

/// A UTF-8, non-hidden entry name; others are skipped (with a note, since they look like mistakes).
fn visible_name(name: &std::ffi::OsStr) -> Option<String> {
    let Some(name) = name.to_str() else {
        tracing::warn!(name = ?name, "skipping a repository entry whose name is not UTF-8");
        return None;
    };
    (!name.starts_with('.')).then(|| name.to_string())
}

/// Triton's version folder names: decimal, no sign, no leading zeros.
fn parse_version(name: &str) -> Option<i64> {
    let canonical = !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) && (name == "0" || !name.starts_with('0'));
    if canonical { name.parse().ok() } else { None }
}

/// Reads one model folder; `None` when `dir` is not a directory (or vanished while being read).
fn read_model(dir: &Path, name: &str) -> Result<Option<ModelSource>, RepositoryError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RepositoryError::io(dir, e)),
    }
    let entries = match sorted_entries(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RepositoryError::io(dir, e)),
    };

    let mut hasher = DefaultHasher::new();
    let config_path = dir.join(CONFIG_FILE);
    let config_bytes = match fs::read(&config_path) {
        Ok(bytes) => Some(bytes),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::IsADirectory) => None,
        Err(e) => return Err(RepositoryError::io(config_path, e)),
    };
    config_bytes.hash(&mut hasher);

    let mut versions = Vec::new();
    for (entry_name, path) in entries {
        if entry_name == CONFIG_FILE || entry_name.to_str().is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        let Some(meta) = metadata_if_present(&path)? else {
            continue;
        };
        entry_name.hash(&mut hasher);
        meta.is_dir().hash(&mut hasher);
        match entry_name.to_str().and_then(parse_version) {
            Some(version) if meta.is_dir() => {
                versions.push(version);
                hash_version_dir(&path, &mut hasher)?;
            }
            _ => {
                if !meta.is_dir() {
                    hash_file_meta(&meta, &mut hasher);
                }
            }
        }
    }
    versions.sort_unstable();

    Ok(Some(ModelSource {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        config_text: config_bytes.map(|b| String::from_utf8_lossy(&b).into_owned()),
        versions,
        fingerprint: hasher.finish(),
    }))
}

/// Hashes every entry directly inside a version folder: name, kind, size and mtime.
fn hash_version_dir(dir: &Path, hasher: &mut DefaultHasher) -> Result<(), RepositoryError> {
    let entries = match sorted_entries(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(RepositoryError::io(dir, e)),
    };
    entries.len().hash(hasher);
    for (name, path) in entries {
        let Some(meta) = metadata_if_present(&path)? else {
            continue;
        };
        name.hash(hasher);
        meta.is_dir().hash(hasher);
        hash_file_meta(&meta, hasher);
    }
    Ok(())
}

fn hash_file_meta(meta: &fs::Metadata, hasher: &mut DefaultHasher) {
    meta.len().hash(hasher);
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    mtime.hash(hasher);
}

/// Metadata following symlinks; `None` for an entry that vanished or is a dangling link.
fn metadata_if_present(path: &Path) -> Result<Option<fs::Metadata>, RepositoryError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RepositoryError::io(path, e)),
    }
}

/// A folder's entries sorted by name, so hashing does not depend on `read_dir` order.
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        entries.push((entry.file_name(), entry.path()));
    }
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
