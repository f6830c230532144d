//! A load request's overrides, as Triton's model-repository extension defines them: `config`
//! (JSON that replaces `config.pbtxt`) and `file:<path>` (a model's files sent with the request,
//! e.g. `file:1/model.onnx`). Files are written to a private temporary copy of the model (mode
//! 0700, under the system's temporary folder), each path confined to it, their count and size
//! bounded; the copy is removed when the model is unloaded or replaced.

use std::path::{Component, Path};
use std::sync::Arc;

use tritium_repository::{self as repository, ModelSource};

use super::ModelRepository;
use crate::WorkerError;

/// The most files one load may carry.
pub const MAX_OVERRIDE_FILES: usize = 4096;
/// The most bytes they may hold together (a gRPC message holds at most 2 GiB anyway).
pub const MAX_OVERRIDE_BYTES: u64 = 2 << 30;

/// One `file:` load parameter: its path inside the model folder and its content.
#[derive(Debug, Clone)]
pub struct FileOverride {
    pub path: String,
    pub content: bytes::Bytes,
}

/// The private copy of a model made of a load's files; removed once no loaded model uses it.
#[derive(Debug)]
pub struct OverrideFolder {
    dir: tempfile::TempDir,
}

impl OverrideFolder {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Triton's answer to a load it cannot find the model for, which it also gives for `file:`
/// overrides without a config and for paths outside the model.
fn not_polled(name: &str) -> WorkerError {
    WorkerError::LoadFailed { name: name.to_string(), reason: "failed to poll from model repository".to_string() }
}

/// Whether `path` names a file inside the model folder: relative, no `..`, nothing empty.
fn confined(path: &str) -> bool {
    !path.is_empty() && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

/// Writes `files` as model `name` into a new private folder and reads it as a model source.
pub(super) fn write(name: &str, files: &[FileOverride]) -> Result<(Arc<OverrideFolder>, ModelSource), WorkerError> {
    let total: u64 = files.iter().map(|f| f.content.len() as u64).sum();
    if files.len() > MAX_OVERRIDE_FILES || total > MAX_OVERRIDE_BYTES {
        return Err(WorkerError::LoadFailed {
            name: name.to_string(),
            reason: format!(
                "the load carries {} files of {total} bytes; at most {MAX_OVERRIDE_FILES} files of {MAX_OVERRIDE_BYTES} bytes are accepted",
                files.len()
            ),
        });
    }
    if !repository::is_plain_name(name) || files.iter().any(|f| !confined(&f.path)) {
        return Err(not_polled(name));
    }
    // Triton answers a file it cannot write as a model it cannot poll; the cause goes to the log.
    let io = |what: &str, e: std::io::Error| {
        tracing::warn!(model = name, "cannot write the model's override files ({what}): {e}");
        not_polled(name)
    };
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("tritium-override-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(|e| io("a temporary folder", e))?;
    let model_dir = dir.path().join(name);
    for file in files {
        let target = model_dir.join(&file.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("a folder", e))?;
        }
        std::fs::write(&target, &file.content).map_err(|e| io("a file", e))?;
    }
    let folder = Arc::new(OverrideFolder { dir });
    let source = repository::find_model(&[folder.path().to_path_buf()], name)?.ok_or_else(|| not_polled(name))?;
    Ok((folder, source))
}

impl ModelRepository {
    /// Loads model `name` from files sent with the request (Triton's `file:` load parameters),
    /// with `config_json`, which they need. The model does not have to be in the repository; a
    /// later load without files reads the repository again.
    pub fn load_files(&self, name: &str, config_json: Option<&str>, files: &[FileOverride]) -> Result<(), WorkerError> {
        if files.is_empty() {
            return self.load(name, config_json);
        }
        if !self.clients_control() {
            return Err(WorkerError::ModelControlDisabled);
        }
        let json = config_json.ok_or_else(|| not_polled(name))?;
        if repository::parse_config_json(json).is_err() {
            return Err(not_polled(name));
        }
        let (folder, source) = write(name, files)?;
        self.check_budget(&source)?;
        self.check_override(&source, json)?;
        self.load_composing_models(&source, Some(json), 0)?;
        let _loading = self.loading.enter(name);
        let built = self.build(&source, Some(json)).map(|model| model.with_files(folder));
        let _guard = self.lifecycle.lock();
        self.settle(&source, built, super::LoadCause::Client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> FileOverride {
        FileOverride { path: path.to_string(), content: bytes::Bytes::from(content.to_string()) }
    }

    #[test]
    fn files_are_written_to_a_private_copy_that_goes_with_the_folder() {
        let (folder, source) = write("m", &[file("1/model.py", "x = 1"), file("1/sub/data.txt", "d")]).expect("written");
        assert_eq!(source.versions, vec![1]);
        assert_eq!(std::fs::read_to_string(folder.path().join("m/1/sub/data.txt")).expect("read"), "d");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(folder.path()).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "only the server's user may read it");
        let path = folder.path().to_path_buf();
        drop(folder);
        assert!(!path.exists());
    }

    #[test]
    fn paths_outside_the_model_are_refused_as_triton_refuses_them() {
        for path in ["../evil.py", "/tmp/evil.py", "1/../../evil.py", ""] {
            let error = write("m", &[file(path, "x")]).expect_err(path);
            assert_eq!(error.to_string(), "failed to load 'm', failed to poll from model repository", "{path}");
        }
        assert!(write("../m", &[file("1/model.py", "x")]).is_err());
    }

    #[test]
    fn a_file_that_cannot_be_written_is_answered_as_triton_does() {
        let long = format!("1/{}", "A".repeat(300));
        let error = write("m", &[file(&long, "x")]).expect_err("name too long");
        assert_eq!(error.to_string(), "failed to load 'm', failed to poll from model repository");
    }

    #[test]
    fn too_many_files_are_refused() {
        let many: Vec<FileOverride> = (0..=MAX_OVERRIDE_FILES).map(|i| file(&format!("1/f{i}"), "")).collect();
        let error = write("m", &many).expect_err("too many");
        assert!(error.to_string().contains("at most 4096 files"), "{error}");
    }
}
