//! The unpacker against good archives and hostile ones, built entry by entry with the `tar` crate.

use std::os::unix::fs::PermissionsExt;

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use super::*;

/// One archive entry; names and link targets go into the header as they are, unchecked.
enum Item<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Link(&'a str, &'a str),
    /// A hard link: name, then the earlier entry it names.
    Hard(&'a str, &'a str),
    Other(&'a str, EntryType),
}

fn header(name: &str, kind: EntryType, size: u64, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(1_700_000_000);
    header
}

fn linked(name: &str, kind: EntryType, target: &str) -> Header {
    let mut header = header(name, kind, 0, 0o777);
    header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
    header
}

fn targz(items: &[Item<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for item in items {
        let (mut header, data): (Header, &[u8]) = match *item {
            Item::File(name, data) => (header(name, EntryType::Regular, data.len() as u64, 0o755), data),
            Item::Dir(name) => (header(name, EntryType::Directory, 0, 0o755), b""),
            Item::Link(name, target) => (linked(name, EntryType::Symlink, target), b""),
            Item::Hard(name, target) => (linked(name, EntryType::Link, target), b""),
            Item::Other(name, kind) => (header(name, kind, 0, 0o644), b""),
        };
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A venv's shape: an interpreter, a module, a relative and an absolute symlink.
fn venv(version: &[u8]) -> Vec<u8> {
    targz(&[
        Item::Dir("./"),
        Item::Dir("./bin/"),
        Item::File("./bin/python3", b"#!/bin/sh\n"),
        Item::Link("./bin/python", "/usr/bin/python3"),
        Item::File("./lib/site.py", version),
        Item::Link("./lib64", "lib"),
    ])
}

struct Place {
    _dir: tempfile::TempDir,
    temp: PathBuf,
    outside: PathBuf,
    archive: PathBuf,
}

impl Place {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (temp, outside) = (dir.path().join("temp"), dir.path().join("outside"));
        fs::create_dir(&temp).unwrap();
        fs::create_dir(&outside).unwrap();
        let archive = dir.path().join("model").join("env.tar.gz");
        fs::create_dir(archive.parent().unwrap()).unwrap();
        Place { _dir: dir, temp, outside, archive }
    }

    fn unpack(&self, bytes: &[u8], limits: &EnvLimits) -> Result<PathBuf, String> {
        fs::write(&self.archive, bytes).unwrap();
        unpacked_in(&self.temp, &self.archive, limits)
    }

    /// What the cache folder holds: environments and partial folders.
    fn leftovers(&self) -> Vec<String> {
        let root = self.temp.read_dir().unwrap().next().unwrap().unwrap().path();
        root.read_dir().unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
    }

    fn refused(&self, bytes: &[u8], limits: &EnvLimits, fragment: &str) {
        let before = self.temp.read_dir().unwrap().next().map(|_| self.leftovers()).unwrap_or_default();
        let error = self.unpack(bytes, limits).unwrap_err();
        assert!(error.contains(fragment), "{error}");
        assert!(error.contains(&self.archive.display().to_string()), "names the archive: {error}");
        assert_eq!(self.leftovers(), before, "nothing kept after: {error}");
        assert_eq!(self.outside.read_dir().unwrap().count(), 0, "nothing written outside");
    }
}

#[test]
fn an_archive_unpacks_once_and_a_changed_one_again() {
    let place = Place::new();
    let dir = place.unpack(&venv(b"one"), &EnvLimits::default()).unwrap();
    assert_eq!(fs::read(dir.join("lib64/site.py")).unwrap(), b"one");
    assert_eq!(fs::read_link(dir.join("bin/python")).unwrap(), Path::new("/usr/bin/python3"));
    let python = fs::metadata(dir.join("bin/python3")).unwrap();
    assert_eq!(python.permissions().mode() & 0o111, 0o111, "executable");
    assert_eq!(python.mtime(), 1_700_000_000);
    assert_eq!(fs::metadata(dir.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);

    fs::write(dir.join("marker"), "kept").unwrap();
    assert_eq!(place.unpack(&venv(b"one"), &EnvLimits::default()).unwrap(), dir, "reused");
    assert!(dir.join("marker").exists(), "not unpacked again");

    let changed = place.unpack(&venv(b"two"), &EnvLimits::default()).unwrap();
    assert_ne!(changed, dir);
    assert_eq!(fs::read(changed.join("lib/site.py")).unwrap(), b"two");
    assert_eq!(place.leftovers().len(), 2, "two environments, no partial folders");
}

#[test]
fn concurrent_loads_of_one_archive_share_one_unpack() {
    let place = Place::new();
    fs::write(&place.archive, venv(b"shared")).unwrap();
    let dirs: Vec<PathBuf> = std::thread::scope(|scope| {
        let loads: Vec<_> =
            (0..4).map(|_| scope.spawn(|| unpacked_in(&place.temp, &place.archive, &EnvLimits::default()).unwrap())).collect();
        loads.into_iter().map(|load| load.join().unwrap()).collect()
    });
    assert!(dirs.iter().all(|d| *d == dirs[0]), "{dirs:?}");
    assert_eq!(place.leftovers().len(), 1);
}

#[test]
fn partial_folders_of_dead_processes_are_removed_and_never_used() {
    let place = Place::new();
    let good = venv(b"good");
    let digest = sha256(&mut good.as_slice()).unwrap();
    let root = place.temp.join(format!("tritium-python-envs-{}", unsafe { libc::getuid() }));
    fs::create_dir_all(root.join(format!("{digest}.partial-999999999-0/bin"))).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
    let dir = place.unpack(&good, &EnvLimits::default()).unwrap();
    assert!(dir.join("bin/python3").is_file());
    assert_eq!(place.leftovers(), vec![digest]);
}

#[test]
fn paths_leaving_the_folder_are_refused() {
    let place = Place::new();
    let limits = EnvLimits::default();
    place.refused(&targz(&[Item::File("../evil", b"x")]), &limits, r#"entry "../evil" has a '..' component"#);
    place.refused(&targz(&[Item::File("bin/../../evil", b"x")]), &limits, "has a '..' component");
    let absolute = format!("{}/evil", place.outside.display());
    place.refused(&targz(&[Item::File(&absolute, b"x")]), &limits, "has an absolute path");
    place.refused(&targz(&[Item::Link("up", "../outside")]), &limits, "is a symlink leading out of");
    place.refused(&targz(&[Item::Link("bin/up", "../../x")]), &limits, "is a symlink leading out of");
}

#[test]
fn nothing_is_written_through_a_symlink() {
    let place = Place::new();
    let limits = EnvLimits::default();
    let outside = place.outside.to_str().unwrap();
    // An absolute symlink is kept, but an entry under it would land outside.
    place.refused(
        &targz(&[Item::Link("lib", outside), Item::File("lib/pwned", b"x")]),
        &limits,
        "would be written through the symlink",
    );
    place.refused(
        &targz(&[Item::Link("lib", "bin"), Item::Dir("bin"), Item::File("lib/x", b"x")]),
        &limits,
        "written through the symlink",
    );
    // A symlink replaced by a file of its name: the file must not be opened through the link.
    let target = format!("{outside}/target");
    place.refused(&targz(&[Item::Link("python3", &target), Item::File("python3", b"x")]), &limits, "appears twice");
    place.refused(&targz(&[Item::File("a", b"x"), Item::Dir("a")]), &limits, "appears twice");
}

#[test]
fn a_hard_link_to_a_file_unpacked_before_it_is_a_copy() {
    let place = Place::new();
    // Python's tarfile (so conda-pack) names the target as it named the file: `./` and all.
    let archive = targz(&[
        Item::Dir("./"),
        Item::File("./lib/libz.so.1", b"elf"),
        Item::Hard("./bin/libz-copy", "./lib/libz.so.1"),
        Item::Hard("bin/again", "bin/libz-copy"),
    ]);
    let dir = place.unpack(&archive, &EnvLimits::default()).unwrap();
    let original = fs::metadata(dir.join("lib/libz.so.1")).unwrap();
    for copy in ["bin/libz-copy", "bin/again"] {
        assert_eq!(fs::read(dir.join(copy)).unwrap(), b"elf", "{copy}");
        let meta = fs::symlink_metadata(dir.join(copy)).unwrap();
        assert!(meta.is_file() && meta.ino() != original.ino() && meta.nlink() == 1, "{copy}: a file of its own");
        assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{copy}: the file's mode");
        assert_eq!(meta.mtime(), 1_700_000_000, "{copy}: the file's mtime");
    }
}

#[test]
fn a_hard_link_counts_its_bytes_and_is_an_entry() {
    let place = Place::new();
    let archive = targz(&[Item::File("a", &[1; 60]), Item::Hard("b", "a")]);
    assert!(place.unpack(&archive, &EnvLimits { max_bytes: 120, max_entries: 2 }).is_ok());
    let place = Place::new();
    place.refused(&archive, &EnvLimits { max_bytes: 119, max_entries: 2 }, "it unpacks to more than 119 bytes");
    place.refused(&archive, &EnvLimits { max_bytes: 120, max_entries: 1 }, "it has more than 1 entries");
}

#[test]
fn a_hard_link_to_anything_but_an_earlier_file_is_refused() {
    let place = Place::new();
    let limits = EnvLimits::default();
    let refused = |items: &[Item<'_>], fragment: &str| place.refused(&targz(items), &limits, fragment);
    refused(
        &[Item::Hard("b", "a"), Item::File("a", b"x")],
        r#"entry "b" is a hard link to "a", which is not a file unpacked before it"#,
    );
    refused(&[Item::Hard("b", "b")], "which is not a file unpacked before it");
    refused(&[Item::Other("b", EntryType::Link)], "is a hard link without a target");
    refused(&[Item::Dir("lib"), Item::Hard("b", "lib")], r#"is a hard link to "lib", which is a folder"#);
    refused(&[Item::File("lib/a", b"x"), Item::Hard("b", "lib/")], "which is a folder");
    refused(&[Item::File("a", b"x"), Item::Hard("b", "./")], "which is a folder");
    refused(&[Item::File("a", b"x"), Item::Link("s", "a"), Item::Hard("b", "s")], r#"to "s", which is a symlink"#);
    refused(
        &[Item::File("lib/a", b"x"), Item::Link("lib64", "lib"), Item::Hard("b", "lib64/a")],
        r#"is a hard link to "lib64/a", which is reached through the symlink "lib64""#,
    );
    // Outside: by '..', or by an absolute path (to a file that exists there, too).
    refused(&[Item::File("a", b"x"), Item::Hard("b", "../a")], r#"is a hard link to "../a", which has a '..' component"#);
    refused(&[Item::File("a", b"x"), Item::Hard("b", "lib/../a")], "which has a '..' component");
    refused(&[Item::File("a", b"x"), Item::Hard("b", "/etc/passwd")], r#"to "/etc/passwd", which has an absolute path"#);
    // The link's own path is checked like any entry's.
    refused(&[Item::File("a", b"x"), Item::Hard("../b", "a")], r#"entry "../b" has a '..' component"#);
    let outside = place.outside.to_str().unwrap();
    refused(
        &[Item::File("a", b"x"), Item::Link("lib", outside), Item::Hard("lib/b", "a")],
        "would be written through the symlink",
    );
    refused(&[Item::File("a", b"x"), Item::File("b", b"y"), Item::Hard("b", "a")], "appears twice");
    refused(&[Item::File("a", b"x"), Item::Link("b", "/usr/bin/python3"), Item::Hard("b", "a")], "appears twice");
}

#[test]
fn devices_and_fifos_are_refused() {
    let place = Place::new();
    let limits = EnvLimits::default();
    place.refused(&targz(&[Item::Other("null", EntryType::Char)]), &limits, "is a device file or fifo");
    place.refused(&targz(&[Item::Other("pipe", EntryType::Fifo)]), &limits, "is a device file or fifo");
}

#[test]
fn the_byte_and_entry_bounds_are_enforced() {
    let place = Place::new();
    let small = EnvLimits { max_bytes: 100, max_entries: 3 };
    let fits = targz(&[Item::File("a", &[1; 60]), Item::File("b", &[2; 40]), Item::Dir("c")]);
    assert!(place.unpack(&fits, &small).is_ok());
    let big = targz(&[Item::File("a", &[1; 60]), Item::File("b", &[2; 41])]);
    place.refused(&big, &small, "it unpacks to more than 100 bytes (--backend-config=python,packed-env-max-byte-size)");
    let many = targz(&[Item::Dir("a"), Item::Dir("b"), Item::Dir("c"), Item::Dir("d")]);
    place.refused(&many, &small, "it has more than 3 entries (--backend-config=python,packed-env-max-entries)");
    // A folder carrying data the reader skips: inflated bytes that are neither files nor headers.
    let mut padded = header("padded", EntryType::Directory, 20 << 10, 0o755);
    padded.set_cksum();
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    builder.append(&padded, &[0u8; 20 << 10][..]).unwrap();
    let padded = builder.into_inner().unwrap().finish().unwrap();
    place.refused(&padded, &small, "its header records take more than 12288 bytes (4096 per entry allowed)");
}

#[test]
fn header_records_are_bounded_before_they_are_held() {
    let place = Place::new();
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let name = vec![b'a'; 2 << 20];
    let mut long = header("././@LongLink", EntryType::GNULongName, name.len() as u64, 0o644);
    long.set_cksum();
    builder.append(&long, name.as_slice()).unwrap();
    let mut file = header("short", EntryType::Regular, 0, 0o644);
    file.set_cksum();
    builder.append(&file, &b""[..]).unwrap();
    let bytes = builder.into_inner().unwrap().finish().unwrap();
    place.refused(&bytes, &EnvLimits::default(), "header records take more than 1048576 bytes");
}

#[test]
fn garbage_and_truncated_archives_are_clear_errors() {
    let place = Place::new();
    let limits = EnvLimits::default();
    place.refused(b"#!/bin/sh\necho not an archive\n", &limits, "it is not a readable .tar.gz");
    let whole = targz(&[Item::File("bin/python3", &[7; 100_000])]);
    place.refused(&whole[..whole.len() / 2], &limits, "it is not a readable .tar.gz");
}

#[test]
fn a_cache_folder_others_can_write_is_refused() {
    let place = Place::new();
    let root = place.temp.join(format!("tritium-python-envs-{}", unsafe { libc::getuid() }));
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
    let error = place.unpack(&venv(b"x"), &EnvLimits::default()).unwrap_err();
    assert!(error.contains("only this user can write"), "{error}");
}

#[test]
fn only_tar_gz_names_are_packed() {
    assert!(is_packed(Path::new("m/env.tar.gz")) && is_packed(Path::new("env.tgz")));
    assert!(!is_packed(Path::new("m/env")) && !is_packed(Path::new("env.zip")));
}
