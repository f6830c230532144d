//! Tests for repository scanning, on temporary folders.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;

const IDENTITY: &str = r#"
name: "identity"
backend: "identity"
max_batch_size: 4
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
"#;

fn write(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, contents).expect("write");
}

fn mkdir(path: &Path) {
    fs::create_dir_all(path).expect("mkdir");
}

/// Two repositories: `a` holds identity (versions 1, 2, 3 plus noise) and bare; `b` holds other.
fn two_repositories() -> (tempfile::TempDir, Vec<PathBuf>) {
    let root = tempfile::tempdir().expect("tempdir");
    let a = root.path().join("a");
    let b = root.path().join("b");
    write(&a.join("identity").join(CONFIG_FILE), IDENTITY);
    for version in ["1", "2", "3"] {
        write(&a.join("identity").join(version).join("model.bin"), "weights");
    }
    for noise in ["abc", "003", "-1", "warmup", ".hidden"] {
        mkdir(&a.join("identity").join(noise));
    }
    write(&a.join("identity").join("7"), "a file named like a version is not one");
    mkdir(&a.join("bare").join("1"));
    mkdir(&a.join(".git").join("objects"));
    write(&a.join("README.md"), "not a model");
    write(&b.join("other").join(CONFIG_FILE), "backend: \"identity\"\n");
    mkdir(&b.join("other").join("10"));
    mkdir(&b.join("other").join("2"));
    (root, vec![a, b])
}

#[test]
fn scans_two_repositories() {
    let (_root, paths) = two_repositories();
    let models = scan_repositories(&paths).expect("scan");
    let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["bare", "identity", "other"]);

    let identity = &models[1];
    assert_eq!(identity.dir, paths[0].join("identity"));
    assert_eq!(identity.versions, [1, 2, 3]);
    assert_eq!(identity.config_text.as_deref(), Some(IDENTITY));
    assert_eq!(identity.version_dir(2), paths[0].join("identity").join("2"));
    let config = identity.config().expect("valid").expect("present");
    assert_eq!(config.max_batch_size, 4);
    assert_eq!(identity.select_versions(&config).expect("versions"), [3]);

    let bare = &models[0];
    assert_eq!(bare.config_text, None);
    assert_eq!(bare.config().expect("no config is fine"), None);
    assert_eq!(bare.versions, [1]);

    let other = &models[2];
    assert_eq!(other.versions, [2, 10]);
    let config = other.config().expect("valid").expect("present");
    assert_eq!(config.name, "other", "an empty name is filled from the folder");
}

#[test]
fn scanning_twice_gives_the_same_result() {
    let (_root, paths) = two_repositories();
    assert_eq!(scan_repositories(&paths).expect("scan"), scan_repositories(&paths).expect("scan"));
}

#[test]
fn duplicate_names_across_repositories_fail() {
    let (_root, paths) = two_repositories();
    mkdir(&paths[1].join("identity").join("1"));
    let err = scan_repositories(&paths).expect_err("fails");
    match &err {
        RepositoryError::DuplicateModel { name, first, second } => {
            assert_eq!(name, "identity");
            assert_eq!(first, &paths[0].join("identity"));
            assert_eq!(second, &paths[1].join("identity"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.code(), tritium_proto::ErrorCode::Internal);
    assert!(matches!(find_model(&paths, "identity"), Err(RepositoryError::DuplicateModel { .. })));
}

#[test]
fn a_missing_repository_is_named() {
    let (root, mut paths) = two_repositories();
    let missing = root.path().join("nope");
    paths.push(missing.clone());
    let err = scan_repositories(&paths).expect_err("fails");
    assert!(matches!(&err, RepositoryError::RepositoryNotFound { path } if path == &missing), "{err:?}");
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    let file = paths[0].join("README.md");
    let err = scan_repositories(&[file]).expect_err("fails");
    assert!(matches!(err, RepositoryError::RepositoryNotFound { .. }), "{err:?}");
    assert!(find_model(&[missing], "identity").is_err());
}

#[test]
fn finds_one_model_by_name() {
    let (_root, paths) = two_repositories();
    let other = find_model(&paths, "other").expect("find").expect("present");
    assert_eq!(other.dir, paths[1].join("other"));
    let scanned = scan_repositories(&paths).expect("scan");
    assert_eq!(Some(&other), scanned.iter().find(|m| m.name == "other"));
    for absent in ["missing", "README.md", "", ".git", "..", "../a/identity", "identity/1", "."] {
        assert_eq!(find_model(&paths, absent).expect("find"), None, "{absent:?}");
    }
}

#[test]
fn config_override_replaces_the_file() {
    let (_root, paths) = two_repositories();
    let bare = find_model(&paths, "bare").expect("find").expect("present");
    let json = r#"{"backend":"identity","max_batch_size":2,"input":[{"name":"I","data_type":"TYPE_INT32","dims":[1]}]}"#;
    let config = bare.config_with_override(Some(json)).expect("valid").expect("present");
    assert_eq!((config.name.as_str(), config.max_batch_size), ("bare", 2));
    let err = bare.config_with_override(Some(r#"{"name":"x"}"#)).expect_err("fails");
    assert!(matches!(err, RepositoryError::NameMismatch { .. }), "{err:?}");
    let err = bare.config_with_override(Some("{nope")).expect_err("fails");
    assert!(err.to_string().starts_with("failed to parse the configuration of model 'bare': "), "{err}");
    assert_eq!(bare.config_with_override(None).expect("no file"), None);
}

#[test]
fn a_bad_config_file_fails_only_at_parse_time() {
    let (_root, paths) = two_repositories();
    write(&paths[0].join("broken").join(CONFIG_FILE), "input { name: ");
    let models = scan_repositories(&paths).expect("scanning does not parse");
    let broken = models.iter().find(|m| m.name == "broken").expect("listed");
    let err = broken.config().expect_err("fails");
    assert!(matches!(&err, RepositoryError::ConfigParse { model, .. } if model == "broken"), "{err:?}");
    let err = broken.select_versions(&ModelConfig::default()).expect_err("fails");
    assert!(matches!(err, RepositoryError::NoVersionAvailable { .. }), "{err:?}");
}

fn fingerprint(paths: &[PathBuf]) -> u64 {
    find_model(paths, "identity").expect("find").expect("present").fingerprint
}

#[test]
fn fingerprint_follows_versions_config_and_files() {
    let (_root, paths) = two_repositories();
    let model = paths[0].join("identity");
    let start = fingerprint(&paths);
    assert_eq!(start, fingerprint(&paths), "stable while nothing changes");

    mkdir(&model.join("4"));
    let added_version = fingerprint(&paths);
    assert_ne!(added_version, start, "a new version folder");

    write(&model.join(CONFIG_FILE), &IDENTITY.replace("max_batch_size: 4", "max_batch_size: 5"));
    let edited_config = fingerprint(&paths);
    assert_ne!(edited_config, added_version, "an edited config.pbtxt");

    write(&model.join("2").join("model.bin"), "bigger weights");
    let edited_file = fingerprint(&paths);
    assert_ne!(edited_file, edited_config, "a resized file in a version folder");

    write(&model.join("2").join("extra.bin"), "x");
    let added_file = fingerprint(&paths);
    assert_ne!(added_file, edited_file, "a new file in a version folder");

    fs::remove_dir_all(model.join("1")).expect("rm");
    let removed_version = fingerprint(&paths);
    assert_ne!(removed_version, added_file, "a removed version folder");

    mkdir(&model.join(".cache"));
    write(&model.join(".config.pbtxt.swp"), "editor noise");
    mkdir(&model.join("notes"));
    mkdir(&model.join("3").join("nested").join("deeper"));
    let after_noise = fingerprint(&paths);
    mkdir(&model.join(".more"));
    write(&model.join("3").join("nested").join("deeper").join("f"), "deep changes are not tracked");
    assert_eq!(fingerprint(&paths), after_noise, "hidden entries and deep files are ignored");
}

#[test]
fn version_names_follow_triton() {
    assert_eq!(parse_version("0"), Some(0));
    assert_eq!(parse_version("12"), Some(12));
    for bad in ["", "012", "-1", "+1", "1a", "v1", " 1", "99999999999999999999"] {
        assert_eq!(parse_version(bad), None, "{bad:?}");
    }
}
