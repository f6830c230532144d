//! The files a model's config names (`model_path`, `default_model_filename`, `label_filename`),
//! checked before any loader opens them.
//!
//! A client's `config` override on RepositoryModelLoad may name files too, so what it names is held
//! to the model's own folder: a relative path of plain names only, no `..`, no root. Links the
//! operator placed in the folder are followed (a repository often links its weights from
//! elsewhere); a client cannot add any. Whatever the config's origin, the target must be a regular
//! file or a folder: opening a FIFO or a device would block the loading thread or read without end.

use std::path::{Component, Path, PathBuf};

use tritium_proto::inference::model_warmup::input::InputDataType;

/// Config parameters that name files.
fn names_a_file(key: &str) -> bool {
    key == "model_path" || key.ends_with("_path") || key.ends_with("_file") || key.ends_with("_dir")
}

/// Refuses a client-given config whose file names could leave the model folder.
pub fn check_override_paths(config: &tritium_proto::inference::ModelConfig) -> Result<(), String> {
    if !config.default_model_filename.is_empty() {
        confined(&config.default_model_filename).map_err(|why| format!("default_model_filename {why}"))?;
    }
    for (key, parameter) in &config.parameters {
        if names_a_file(key) && !parameter.string_value.is_empty() {
            confined(&parameter.string_value).map_err(|why| format!("parameter '{key}' {why}"))?;
        }
    }
    for output in &config.output {
        if !output.label_filename.is_empty() {
            confined(&output.label_filename).map_err(|why| format!("label_filename {why}"))?;
        }
    }
    for sample in &config.model_warmup {
        for input in sample.inputs.values() {
            if let Some(InputDataType::InputDataFile(file)) = &input.input_data_type {
                confined(file).map_err(|why| format!("model_warmup input_data_file {why}"))?;
            }
        }
    }
    Ok(())
}

/// `named` as a path inside the model folder, or why not.
pub fn confined(named: &str) -> Result<(), String> {
    let path = Path::new(named);
    if path.components().all(|c| matches!(c, Component::Normal(_))) && !named.is_empty() {
        Ok(())
    } else {
        Err(format!("'{named}' must be a relative path inside the model folder (no '..', no leading '/')"))
    }
}

/// Resolves `named` against `model_dir` (when relative) and checks it names a regular file or a
/// folder, following links, without opening it. Errors name the path, never its contents.
pub fn resolve_model_file(model_dir: Option<&Path>, named: &str) -> Result<PathBuf, String> {
    let path = Path::new(named);
    let path = match model_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    };
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() || meta.is_dir() => Ok(path),
        Ok(_) => Err(format!("'{named}' is not a regular file or a folder")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("'{named}' does not exist")),
        Err(_) => Err(format!("'{named}' cannot be read")),
    }
}

/// Reads `<model folder>/<folder>/<file>` (a warmup sample, an initial state): at most `limit`
/// bytes, checked as [`resolve_model_file`] checks, read with the bound (a file that grows while
/// it is read is cut, not followed). Errors name the file, never its contents.
pub fn read_model_file(model_dir: Option<&Path>, folder: &str, file: &str, limit: usize) -> Result<bytes::Bytes, String> {
    use std::io::Read;
    let dir = model_dir.ok_or_else(|| format!("'{file}' needs a model folder"))?;
    let path = resolve_model_file(Some(&dir.join(folder)), file)?;
    let opened = std::fs::File::open(&path).map_err(|_| format!("'{file}' cannot be read"))?;
    let mut data = Vec::new();
    opened.take(limit as u64 + 1).read_to_end(&mut data).map_err(|_| format!("'{file}' cannot be read"))?;
    if data.len() > limit {
        return Err(format!("'{file}' is larger than {limit} bytes"));
    }
    Ok(bytes::Bytes::from(data))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_names_are_confined() {
        for good in ["weights.gguf", "sub/weights.gguf", "./weights.gguf".trim_start_matches("./")] {
            assert!(confined(good).is_ok(), "{good}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/./b/..", "/"] {
            assert!(confined(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_fifo_or_a_missing_file_is_refused_without_opening_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.gguf"), b"GGUFsecret").unwrap();
        assert_eq!(resolve_model_file(Some(dir.path()), "w.gguf").unwrap(), dir.path().join("w.gguf"));
        let fifo = std::ffi::CString::new(dir.path().join("pipe").to_str().unwrap()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(resolve_model_file(Some(dir.path()), "pipe").unwrap_err(), "'pipe' is not a regular file or a folder");
        assert_eq!(resolve_model_file(Some(dir.path()), "absent").unwrap_err(), "'absent' does not exist");
        assert!(resolve_model_file(None, "/dev/zero").is_err());
    }
}
