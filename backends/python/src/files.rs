//! The Python half of the backend, compiled into the binary and written out once to a folder of
//! the server's own: `tritium_python_stub.py`, its `tritium_python_wire.py` and our
//! `triton_python_backend_utils.py` with its `tritium_pb_*.py` modules. The folder
//! is named after the sources' hash, so servers of one build share it and a new build never runs
//! an old stub; one that exists is used only if this user owns it, nobody else can write to it,
//! and its files are exactly ours.

use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const SOURCES: [(&str, &str); 9] = [
    ("tritium_python_stub.py", include_str!("../python/tritium_python_stub.py")),
    ("tritium_python_wire.py", include_str!("../python/tritium_python_wire.py")),
    ("triton_python_backend_utils.py", include_str!("../python/triton_python_backend_utils.py")),
    ("tritium_pb_state.py", include_str!("../python/tritium_pb_state.py")),
    ("tritium_pb_types.py", include_str!("../python/tritium_pb_types.py")),
    ("tritium_pb_tensor.py", include_str!("../python/tritium_pb_tensor.py")),
    ("tritium_pb_requests.py", include_str!("../python/tritium_pb_requests.py")),
    ("tritium_pb_observe.py", include_str!("../python/tritium_pb_observe.py")),
    ("tritium_pb_config.py", include_str!("../python/tritium_pb_config.py")),
];

/// The folder holding the stub's sources, written on first use.
pub fn stub_dir() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| write_sources(&std::env::temp_dir())).clone()
}

fn write_sources(parent: &Path) -> Result<PathBuf, String> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    SOURCES.hash(&mut hasher);
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = parent.join(format!("tritium-python-{uid}-{:016x}", hasher.finish()));
    if !dir.exists() {
        let staging =
            parent.join(format!("{}.{}", dir.file_name().and_then(|n| n.to_str()).unwrap_or("stub"), std::process::id()));
        let made = write_into(&staging).and_then(|()| fs::rename(&staging, &dir).map_err(|e| e.to_string()));
        if made.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        // Another server may have won the race; the checks below decide either way.
    }
    check(&dir, uid).map_err(|why| format!("cannot use the python backend's stub folder {}: {why}", dir.display()))?;
    Ok(dir)
}

fn write_into(dir: &Path) -> Result<(), String> {
    fs::create_dir(dir).map_err(|e| e.to_string())?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    for (name, text) in SOURCES {
        fs::write(dir.join(name), text).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn check(dir: &Path, uid: u32) -> Result<(), String> {
    let meta = fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err("it is not a folder of this user that only this user can write".to_string());
    }
    for (name, text) in SOURCES {
        let found = fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        if found != text.as_bytes() {
            return Err(format!("{name} differs from this build's"));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_sources_are_written_once_and_a_tampered_folder_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = write_sources(parent.path()).unwrap();
        assert_eq!(write_sources(parent.path()).unwrap(), dir, "reused");
        fs::write(dir.join("triton_python_backend_utils.py"), "import os").unwrap();
        let error = write_sources(parent.path()).unwrap_err();
        assert!(error.contains("differs from this build's"), "{error}");
    }
}
