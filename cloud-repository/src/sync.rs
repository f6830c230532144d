//! Copying one model's objects into the local cache: keys checked so that none writes outside
//! the model's folder, bounds on bytes and objects, each file written to a temporary name and
//! renamed, the whole copy built in a temporary folder and renamed into place.
//!
//! Layout: `<root>/<model>/<fingerprint>/<model>/...`, one folder per state of the model's
//! objects, so a reload never rewrites files a loaded model still reads. The two newest states
//! are kept (the one serving and the one loading), older ones removed.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;
use object_store::ObjectMeta;
use tokio::io::AsyncWriteExt;

use crate::store::Objects;

/// Bounds of one model's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_objects: usize,
}

/// An object to copy: its key relative to the model's folder, size and entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub relative: String,
    pub meta: ObjectMeta,
}

/// The model's objects with their keys relative to `model_prefix` (`<prefix>/<model>`), checked.
/// Zero-byte "folder marker" objects (a key that is also a folder of another key) are dropped.
pub(crate) fn entries(model_prefix: &str, objects: Vec<ObjectMeta>, limits: Limits) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::with_capacity(objects.len());
    for meta in objects {
        let key = meta.location.as_ref();
        let relative = key.strip_prefix(model_prefix).and_then(|k| k.strip_prefix('/')).unwrap_or(key).to_string();
        confined(&relative).map_err(|reason| format!("object key '{}' {reason}", printable(&relative)))?;
        entries.push(Entry { relative, meta });
    }
    entries.sort_by(|a, b| a.relative.cmp(&b.relative));
    let folders: std::collections::BTreeSet<&str> =
        entries.iter().flat_map(|e| e.relative.match_indices('/').map(|(i, _)| &e.relative[..i])).collect();
    let folders: std::collections::BTreeSet<String> = folders.into_iter().map(str::to_string).collect();
    entries.retain(|e| !(e.meta.size == 0 && folders.contains(&e.relative)));
    if entries.len() > limits.max_objects {
        return Err(format!(
            "the model has {} objects, more than --cloud-max-model-objects ({})",
            entries.len(),
            limits.max_objects
        ));
    }
    let mut total: u64 = 0;
    for entry in &entries {
        if entry.meta.size > limits.max_bytes {
            return Err(format!(
                "object '{}' is {} bytes, more than --cloud-max-model-bytes ({})",
                printable(&entry.relative),
                entry.meta.size,
                limits.max_bytes
            ));
        }
        total = total.saturating_add(entry.meta.size);
    }
    if total > limits.max_bytes {
        return Err(format!(
            "the model's objects add up to {total} bytes, more than --cloud-max-model-bytes ({})",
            limits.max_bytes
        ));
    }
    Ok(entries)
}

/// Why a relative key may not become a path under the model's folder: empty, absolute, a `.` or
/// `..` segment, an empty segment, a NUL, a backslash or another control character.
pub fn confined(relative: &str) -> Result<(), &'static str> {
    if relative.is_empty() {
        return Err("is empty");
    }
    if relative.contains(['\\', '\0']) || relative.chars().any(char::is_control) {
        return Err("holds a backslash or a control character");
    }
    if relative.starts_with('/') {
        return Err("is absolute");
    }
    if relative.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err("holds an empty, '.' or '..' segment");
    }
    // What the checks above ensure, in the file system's own terms.
    if !Path::new(relative).components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("is not a plain relative path");
    }
    Ok(())
}

/// Identifies one state of a model's objects: their keys, sizes and entity tags.
pub(crate) fn fingerprint(entries: &[Entry]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for entry in entries {
        entry.relative.hash(&mut hasher);
        entry.meta.size.hash(&mut hasher);
        match &entry.meta.e_tag {
            Some(tag) => tag.hash(&mut hasher),
            None => entry.meta.last_modified.timestamp_nanos_opt().hash(&mut hasher),
        }
    }
    entries.len().hash(&mut hasher);
    hasher.finish()
}

/// Copies `entries` into `<model_root>/<fingerprint>/<name>/` unless that copy exists, and
/// returns that folder.
pub(crate) async fn copy_model(
    objects: &Objects,
    model_root: &Path,
    name: &str,
    entries: &[Entry],
    limits: Limits,
) -> Result<PathBuf, String> {
    let generation = model_root.join(format!("{:016x}", fingerprint(entries)));
    let target = generation.join(name);
    if target.is_dir() {
        return Ok(target);
    }
    let io = |what: &str, e: std::io::Error| format!("the local cache: {what}: {}", e.kind());
    std::fs::create_dir_all(model_root).map_err(|e| io("creating the model's folder", e))?;
    let partial = tempfile::Builder::new().prefix(".partial-").tempdir_in(model_root).map_err(|e| io("a temporary folder", e))?;
    let folder = partial.path().join(name);
    let mut copied: u64 = 0;
    for entry in entries {
        let path = folder.join(&entry.relative);
        // Checked again where it is used: no key reaches the file system unchecked.
        confined(&entry.relative).map_err(|r| format!("object key '{}' {r}", printable(&entry.relative)))?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| io("creating a folder", e))?;
        }
        copied = copy_object(objects, entry, &path, copied, limits).await?;
    }
    let kept = partial.keep();
    match std::fs::rename(&kept, &generation) {
        Ok(()) => {}
        // Another copy of the same objects won the race: use it.
        Err(_) if target.is_dir() => {
            let _ = std::fs::remove_dir_all(&kept);
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&kept);
            return Err(io("renaming the copy into place", e));
        }
    }
    prune(model_root, &generation);
    Ok(target)
}

/// One object, streamed to `<path>.part` within the bounds, then renamed to `path`.
async fn copy_object(objects: &Objects, entry: &Entry, path: &Path, copied: u64, limits: Limits) -> Result<u64, String> {
    let io = |e: std::io::Error| format!("the local cache: writing '{}': {}", printable(&entry.relative), e.kind());
    let mut stream = objects.get(&entry.meta.location).await.map_err(|e| e.to_string())?;
    let part = path.with_file_name(format!(".{}.part", path.file_name().and_then(|n| n.to_str()).unwrap_or("object")));
    let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        written += chunk.len() as u64;
        // The object may have grown since it was listed: the bounds hold for what arrives.
        if written > entry.meta.size || copied + written > limits.max_bytes {
            return Err(format!("object '{}' changed while it was copied (more bytes than listed)", printable(&entry.relative)));
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    drop(file);
    tokio::fs::rename(&part, path).await.map_err(io)?;
    Ok(copied + written)
}

/// Removes the copies of a model older than the newest two (and leftover partial copies).
fn prune(model_root: &Path, newest: &Path) {
    let Ok(read) = std::fs::read_dir(model_root) else { return };
    let mut copies: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for entry in read.flatten() {
        let path = entry.path();
        if path == newest {
            continue;
        }
        let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
        copies.push((modified, path));
    }
    copies.sort();
    let partial = |p: &Path| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".partial-"));
    // Partial copies of a sync running now are young; only old ones are left behind by a crash.
    let stale = std::time::Duration::from_secs(3600);
    let finished: Vec<&PathBuf> = copies.iter().filter(|(_, p)| !partial(p)).map(|(_, p)| p).collect();
    for path in finished.iter().take(finished.len().saturating_sub(1)) {
        let _ = std::fs::remove_dir_all(path);
    }
    for (modified, path) in &copies {
        if partial(path) && modified.elapsed().is_ok_and(|age| age > stale) {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

fn printable(text: &str) -> String {
    let escaped: String = text.chars().flat_map(char::escape_debug).collect();
    if escaped.chars().count() > 200 { escaped.chars().take(200).chain("...".chars()).collect() } else { escaped }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path as ObjectPath;

    fn meta(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            location: ObjectPath::parse(key).unwrap(),
            last_modified: Default::default(),
            size,
            e_tag: Some(format!("{key}-{size}")),
            version: None,
        }
    }

    const LIMITS: Limits = Limits { max_bytes: 100, max_objects: 3 };

    #[test]
    fn hostile_keys_never_leave_the_folder() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a\\..\\x", "a\0b", "a/\u{7}", ".."] {
            assert!(confined(bad).is_err(), "{bad:?}");
        }
        for good in ["config.pbtxt", "1/model.onnx", "a/b/c.txt", "...", "x..y"] {
            assert!(confined(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn bounds_and_folder_markers() {
        let ok =
            entries("repo/m", vec![meta("repo/m/config.pbtxt", 10), meta("repo/m/1", 0), meta("repo/m/1/model", 20)], LIMITS);
        let names: Vec<String> = ok.unwrap().into_iter().map(|e| e.relative).collect();
        assert_eq!(names, ["1/model", "config.pbtxt"]);
        let big = entries("m", vec![meta("m/1/model", 101)], LIMITS).unwrap_err();
        assert!(big.contains("101 bytes") && big.contains("--cloud-max-model-bytes"), "{big}");
        let sum = entries("m", vec![meta("m/a", 60), meta("m/b", 60)], LIMITS).unwrap_err();
        assert!(sum.contains("add up to 120"), "{sum}");
        let many = entries("m", (0..4).map(|i| meta(&format!("m/{i}"), 1)).collect(), LIMITS).unwrap_err();
        assert!(many.contains("--cloud-max-model-objects"), "{many}");
        let backslash = entries("m", vec![meta("m/1\\..\\..\\x", 1)], LIMITS).unwrap_err();
        assert!(backslash.contains("backslash"), "{backslash}");
    }

    #[test]
    fn fingerprint_follows_keys_sizes_and_tags() {
        let a = entries("m", vec![meta("m/a", 1)], LIMITS).unwrap();
        let b = entries("m", vec![meta("m/a", 2)], LIMITS).unwrap();
        let c = entries("m", vec![meta("m/b", 1)], LIMITS).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&entries("m", vec![meta("m/a", 1)], LIMITS).unwrap()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
