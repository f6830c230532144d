//! Packed Python environments: a model's `EXECUTION_ENV_PATH` naming a `.tar.gz` (conda-pack's, or
//! `tar czf` of a venv) is unpacked once into a cache folder of this user's, and its `bin/python3`
//! runs the model's stubs.
//!
//! - The cache is `<temp>/tritium-python-envs-<uid>/<sha256 of the archive>`: a changed archive
//!   unpacks again, the same archive (a reload, two models, two servers) is unpacked once. The
//!   archive unpacks into a `.partial-<pid>-<n>` sibling renamed into place, so a folder with the
//!   final name is always whole; partial folders of processes that died are removed. The cache
//!   folder is used only if this user owns it and nobody else can write to it.
//! - The archive is hostile: its entries are checked one by one before anything is written. Files,
//!   folders, symlinks and hard links only (no devices or fifos); no absolute or `..` paths; no
//!   entry under a symlink (written through it) or over one already unpacked (a symlink replaced
//!   by a file); a relative symlink stays inside the environment. Absolute symlinks are kept (a
//!   venv's `bin/python3 -> /usr/bin/python3.12`): the server only ever executes the interpreter
//!   path, and never reads or writes through a link.
//! - A hard link (tar, and so conda-pack, writes one for the second path of a shared inode) must
//!   name a file this archive unpacked before it, by the very path it was unpacked at, and becomes
//!   a copy of it. A copy, not a link: every path stays its own file that nothing else writes
//!   through, and its bytes count against the byte bound like any file's.
//! - Bounds ([`EnvLimits`]): unpacked file bytes, entry count, and header records (GNU long names,
//!   pax records, skipped data): 1 MiB between two entries, which the tar reader holds in memory,
//!   and 4 KiB per allowed entry in all, so no archive inflates to more than its bounds.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, UNIX_EPOCH};

use flate2::read::MultiGzDecoder;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// How much a packed environment may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvLimits {
    /// Bytes of all its files together (`--backend-config=python,packed-env-max-byte-size=N`).
    pub max_bytes: u64,
    /// Entries: files, folders and symlinks (`--backend-config=python,packed-env-max-entries=N`).
    pub max_entries: u64,
}

impl Default for EnvLimits {
    fn default() -> Self {
        EnvLimits { max_bytes: 8 << 30, max_entries: 200_000 }
    }
}

/// Header records the tar reader may take in between two entries (their names and pax records).
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Header records of all entries together, per entry allowed: a header, a long name, a pax record
/// and padding stay well under it.
const HEADER_BYTES_PER_ENTRY: u64 = 4 << 10;

/// Whether `path` names a packed environment rather than a folder.
pub fn is_packed(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".tar.gz") || n.ends_with(".tgz"))
}

/// The folder `archive` unpacks to, unpacked now unless an earlier load did. Blocks while it reads
/// (and hashes) the whole archive: callers are model builds, which run on blocking threads
/// (start-up, loads by clients and by BLS, and polls all build in `spawn_blocking`).
pub fn unpacked(archive: &Path, limits: &EnvLimits) -> Result<PathBuf, String> {
    unpacked_in(&std::env::temp_dir(), archive, limits)
}

fn unpacked_in(parent: &Path, archive: &Path, limits: &EnvLimits) -> Result<PathBuf, String> {
    let failed = |why: String| format!("cannot unpack {}: {why}", archive.display());
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let root = cache_root(parent, uid)?;
    // O_NONBLOCK: a fifo in the archive's place must not hang the load before the check below.
    let mut file =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(archive).map_err(|e| failed(e.to_string()))?;
    if !file.metadata().map_err(|e| failed(e.to_string()))?.is_file() {
        return Err(failed("it is not a file".to_string()));
    }
    let digest = sha256(&mut file).map_err(|e| failed(e.to_string()))?;
    let dir = root.join(&digest);
    // One unpack per archive in this process; other processes race on the rename below.
    let lock = key_lock(&digest);
    let _held = lock.lock();
    if is_finished(&dir, uid)? {
        return Ok(dir);
    }
    remove_abandoned(&root, &digest);
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let staging = root.join(format!("{digest}.partial-{}-{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed)));
    tracing::info!(archive = %archive.display(), into = %dir.display(), "unpacking a packed python environment");
    let unpacked = file.rewind().map_err(|e| e.to_string()).and_then(|()| unpack(file, &staging, limits, &digest));
    let made = unpacked.and_then(|()| match fs::rename(&staging, &dir) {
        Ok(()) => Ok(()),
        // Another server unpacked the same bytes first.
        Err(_) if is_finished(&dir, uid).unwrap_or(false) => Ok(()),
        Err(e) => Err(format!("cannot move it into {}: {e}", dir.display())),
    });
    if staging.exists() {
        let _ = fs::remove_dir_all(&staging);
    }
    made.map(|()| dir).map_err(failed)
}

/// `<parent>/tritium-python-envs-<uid>`, made if missing; only this user may write in it.
fn cache_root(parent: &Path, uid: u32) -> Result<PathBuf, String> {
    let root = parent.join(format!("tritium-python-envs-{uid}"));
    match fs::DirBuilder::new().mode(0o700).create(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot make the packed environments' folder {}: {e}", root.display())),
    }
    let meta = fs::symlink_metadata(&root).map_err(|e| e.to_string())?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "cannot use the packed environments' folder {}: it is not a folder of this user that only this user can write",
            root.display()
        ));
    }
    Ok(root)
}

/// Whether `dir` holds a whole unpacked environment (it only ever appears by a rename).
fn is_finished(dir: &Path, uid: u32) -> Result<bool, String> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() && meta.uid() == uid => Ok(true),
        Ok(_) => Err(format!("cannot use {}: it is not a folder of this user", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot use {}: {e}", dir.display())),
    }
}

fn key_lock(digest: &str) -> Arc<Mutex<()>> {
    static LOCKS: LazyLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = LazyLock::new(Mutex::default);
    let mut locks = LOCKS.lock();
    Arc::clone(locks.entry(digest.to_string()).or_default())
}

/// Removes partial folders of this archive left by processes that are gone (a crash mid-unpack).
fn remove_abandoned(root: &Path, digest: &str) {
    let Ok(entries) = fs::read_dir(root) else { return };
    let prefix = format!("{digest}.partial-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<libc::pid_t>().ok()) else { continue };
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn sha256(reader: &mut impl Read) -> io::Result<String> {
    let mut hashing = Hashing { inner: reader, hasher: Sha256::new() };
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(hex(hashing.hasher))
}

fn hex(hasher: Sha256) -> String {
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes what is read through it, so the bytes unpacked are the bytes the cache is named after.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Fails a read once `left` is spent; the unpacker refills it entry by entry.
struct Budgeted<R> {
    inner: R,
    left: Rc<Cell<u64>>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 {
            return Err(io::Error::other("header records too large"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

struct Unpacking<'a> {
    root: &'a Path,
    limits: &'a EnvLimits,
    bytes: u64,
    /// Folders already made or checked, relative to the root; nothing replaces one later.
    dirs: HashSet<PathBuf>,
    /// Files and symlinks unpacked, relative to the root: what a hard link may name (a file) and
    /// what it is told it may not. Nothing replaces either later.
    files: HashSet<PathBuf>,
    symlinks: HashSet<PathBuf>,
    buffer: Vec<u8>,
}

fn unpack(file: fs::File, staging: &Path, limits: &EnvLimits, digest: &str) -> Result<(), String> {
    fs::DirBuilder::new().mode(0o700).create(staging).map_err(|e| e.to_string())?;
    let budget = Rc::new(Cell::new(0));
    let reader =
        Budgeted { inner: MultiGzDecoder::new(Hashing { inner: file, hasher: Sha256::new() }), left: Rc::clone(&budget) };
    let mut archive = tar::Archive::new(reader);
    let unreadable = |e: io::Error| format!("it is not a readable .tar.gz ({e})");
    let mut state = Unpacking {
        root: staging,
        limits,
        bytes: 0,
        dirs: HashSet::new(),
        files: HashSet::new(),
        symlinks: HashSet::new(),
        buffer: vec![0; 64 << 10],
    };
    let mut count = 0u64;
    let all_headers = limits.max_entries.saturating_mul(HEADER_BYTES_PER_ENTRY);
    let mut headers_left = all_headers;
    let mut entries = archive.entries().map_err(unreadable)?;
    loop {
        let allowance = MAX_HEADER_BYTES.min(headers_left);
        budget.set(allowance);
        let next = entries.next();
        headers_left -= allowance - budget.get();
        let mut entry = match next {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(_)) if budget.get() == 0 && allowance == MAX_HEADER_BYTES => {
                return Err(format!("an entry's header records take more than {MAX_HEADER_BYTES} bytes"));
            }
            Some(Err(_)) if budget.get() == 0 => {
                return Err(format!(
                    "its header records take more than {all_headers} bytes ({HEADER_BYTES_PER_ENTRY} per entry allowed)"
                ));
            }
            Some(Err(e)) => return Err(unreadable(e)),
        };
        count += 1;
        if count > limits.max_entries {
            return Err(format!(
                "it has more than {} entries (--backend-config=python,packed-env-max-entries)",
                limits.max_entries
            ));
        }
        // File data is bounded by the byte limit, checked before it is read.
        budget.set(u64::MAX);
        state.entry(&mut entry).map_err(|e| match e {
            EntryError::Refused(why) => why,
            EntryError::Read(e) => unreadable(e),
        })?;
    }
    // Hash the rest of the file too (past the tar's end), then compare.
    let mut hashing = archive.into_inner().inner.into_inner();
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| e.to_string())?;
    if hex(hashing.hasher) != digest {
        return Err("the archive changed while it was unpacked".to_string());
    }
    Ok(())
}

enum EntryError {
    Refused(String),
    Read(io::Error),
}

fn refused(path: &Path, why: impl std::fmt::Display) -> EntryError {
    EntryError::Refused(format!("entry {} {why}", shown(path)))
}

fn unwritable(path: &Path, error: io::Error) -> EntryError {
    EntryError::Refused(format!("cannot write entry {}: {error}", shown(path)))
}

/// A name from the archive as it may appear in a message: quoted, escaped and cut short.
fn shown(path: &Path) -> String {
    const MAX_CHARS: usize = 120;
    let quoted = format!("{:?}", path.as_os_str());
    if quoted.chars().count() <= MAX_CHARS {
        quoted
    } else {
        format!("{}...", quoted.chars().take(MAX_CHARS).collect::<String>())
    }
}

impl Unpacking<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), EntryError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let raw = entry.path().map_err(EntryError::Read)?.into_owned();
        let rel = relative(&raw).map_err(|why| refused(&raw, why))?;
        if rel.as_os_str().is_empty() {
            return if kind.is_dir() { Ok(()) } else { Err(refused(&raw, "names the environment's folder itself")) };
        }
        self.parents(&rel).map_err(|why| refused(&raw, why))?;
        let dst = self.root.join(&rel);
        match fs::symlink_metadata(&dst) {
            Ok(meta) if meta.is_dir() && kind.is_dir() => return Ok(()),
            Ok(_) => return Err(refused(&raw, "appears twice")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(unwritable(&raw, e)),
        }
        if kind.is_file() || kind.is_contiguous() {
            self.file(entry, &raw, &dst)?;
            self.files.insert(rel);
            Ok(())
        } else if kind.is_dir() {
            fs::DirBuilder::new().mode(0o755).create(&dst).map_err(|e| unwritable(&raw, e))?;
            self.dirs.insert(rel);
            Ok(())
        } else if kind.is_symlink() {
            let target =
                entry.link_name().map_err(EntryError::Read)?.ok_or_else(|| refused(&raw, "is a symlink without a target"))?;
            if target.as_os_str().is_empty() {
                return Err(refused(&raw, "is a symlink without a target"));
            }
            if !target.is_absolute() && !stays_inside(&rel, &target) {
                return Err(refused(&raw, "is a symlink leading out of the environment's folder"));
            }
            symlink(&target, &dst).map_err(|e| unwritable(&raw, e))?;
            self.symlinks.insert(rel);
            Ok(())
        } else if kind.is_hard_link() {
            let target =
                entry.link_name().map_err(EntryError::Read)?.ok_or_else(|| refused(&raw, "is a hard link without a target"))?;
            let target = self.hard_link_target(&target).map_err(|why| refused(&raw, why))?;
            self.copy(&target, &raw, &dst)?;
            self.files.insert(rel);
            Ok(())
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            Err(refused(&raw, "is a device file or fifo"))
        } else {
            Err(refused(&raw, format!("has an unsupported type ({:?})", kind.as_byte() as char)))
        }
    }

    fn file<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, raw: &Path, dst: &Path) -> Result<(), EntryError> {
        let size = entry.size();
        self.reserve(size)?;
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().ok();
        let mut out = create(dst, mode).map_err(|e| unwritable(raw, e))?;
        let mut copied = 0u64;
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(EntryError::Read(e)),
            };
            out.write_all(&self.buffer[..n]).map_err(|e| unwritable(raw, e))?;
            copied += n as u64;
        }
        if copied != size {
            return Err(EntryError::Read(io::ErrorKind::UnexpectedEof.into()));
        }
        // Byte-compiled caches are valid only next to sources of the same mtime.
        if let Some(mtime) = mtime {
            out.set_modified(UNIX_EPOCH + Duration::from_secs(mtime)).map_err(|e| unwritable(raw, e))?;
        }
        Ok(())
    }

    /// Counts `size` more bytes against the byte bound.
    fn reserve(&mut self, size: u64) -> Result<(), EntryError> {
        if size > self.limits.max_bytes - self.bytes {
            return Err(EntryError::Refused(format!(
                "it unpacks to more than {} bytes (--backend-config=python,packed-env-max-byte-size)",
                self.limits.max_bytes
            )));
        }
        self.bytes += size;
        Ok(())
    }

    /// A hard link's target, relative to the root: a file unpacked before it, named as it was.
    fn hard_link_target(&self, target: &Path) -> Result<PathBuf, String> {
        let rel = relative(target).map_err(|why| format!("is a hard link to {}, which {why}", shown(target)))?;
        if self.files.contains(&rel) {
            return Ok(rel);
        }
        let why = if rel.as_os_str().is_empty() || self.dirs.contains(&rel) {
            "a folder".to_string()
        } else if self.symlinks.contains(&rel) {
            "a symlink".to_string()
        } else if let Some(link) = rel.ancestors().skip(1).find(|a| self.symlinks.contains(*a)) {
            format!("reached through the symlink {}", shown(link))
        } else {
            "not a file unpacked before it".to_string()
        };
        Err(format!("is a hard link to {}, which is {why}", shown(target)))
    }

    /// A hard link made a copy of the file it names (the inode's mode and mtime too).
    fn copy(&mut self, target: &Path, raw: &Path, dst: &Path) -> Result<(), EntryError> {
        let mut from = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.root.join(target))
            .map_err(|e| unwritable(raw, e))?;
        let meta = from.metadata().map_err(|e| unwritable(raw, e))?;
        self.reserve(meta.len())?;
        let mut out = create(dst, meta.mode()).map_err(|e| unwritable(raw, e))?;
        let copied = io::copy(&mut Read::take(&mut from, meta.len()), &mut out).map_err(|e| unwritable(raw, e))?;
        if copied != meta.len() {
            return Err(unwritable(raw, io::ErrorKind::UnexpectedEof.into()));
        }
        if let Ok(mtime) = meta.modified() {
            out.set_modified(mtime).map_err(|e| unwritable(raw, e))?;
        }
        Ok(())
    }

    /// Makes the folders above `rel`; refuses a path through anything that is not a folder.
    fn parents(&mut self, rel: &Path) -> Result<(), String> {
        let Some(parent) = rel.parent() else { return Ok(()) };
        let mut at = PathBuf::new();
        for component in parent.components() {
            at.push(component);
            if self.dirs.contains(&at) {
                continue;
            }
            let full = self.root.join(&at);
            match fs::symlink_metadata(&full) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(format!("would be written through the symlink {}", shown(&at)));
                }
                Ok(_) => return Err(format!("lies under {}, which is not a folder", shown(&at))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new().mode(0o755).create(&full).map_err(|e| format!("cannot make its folder: {e}"))?;
                }
                Err(e) => return Err(format!("cannot check {}: {e}", shown(&at))),
            }
            self.dirs.insert(at.clone());
        }
        Ok(())
    }
}

/// A new file with the execute bits of `mode`; `create_new`: never through a symlink, never over a file.
fn create(dst: &Path, mode: u32) -> io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).mode(0o644 | (mode & 0o111)).open(dst)
}

/// An entry's path relative to the environment's folder; `.` components dropped.
fn relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a '..' component"),
            Component::RootDir | Component::Prefix(_) => return Err("has an absolute path"),
        }
    }
    Ok(rel)
}

/// Whether a relative symlink at `rel` (itself free of `..`) names something inside the folder.
fn stays_inside(rel: &Path, target: &Path) -> bool {
    let mut depth = rel.components().count().saturating_sub(1);
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
