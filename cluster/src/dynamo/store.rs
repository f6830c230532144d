//! Where Dynamo's workers keep their records: the file store (`DYN_FILE_KV`: one folder per
//! bucket, one file per key named by its percent-encoded key, alive while its owner touches
//! it) or etcd (one key per record, held by the worker's lease). Both are read whole, bucket by
//! bucket; a file store's records not touched for a TTL belong to a dead worker and are
//! skipped, as Dynamo's own processes would delete them.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Dynamo's file store TTL: owners touch their files every third of it.
pub const FILE_TTL: Duration = Duration::from_secs(10);
pub use crate::discovery::dynamo_target::{MAX_RECORD_BYTES, MAX_RECORDS};

#[derive(Clone)]
pub enum DynamoStore {
    File { root: PathBuf, ttl: Duration },
    Etcd { client: etcd_client::Client },
    /// The `DynamoWorkerMetadata` objects of ready pods (read only: a Tritium worker does not
    /// register in Dynamo's Kubernetes layout).
    #[cfg(feature = "kubernetes")]
    Kubernetes { discovery: std::sync::Arc<crate::discovery::kubernetes::KubeDiscovery> },
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DynamoStore::File { root, .. } => write!(f, "DynamoStore::File({})", root.display()),
            DynamoStore::Etcd { .. } => write!(f, "DynamoStore::Etcd"),
            #[cfg(feature = "kubernetes")]
            DynamoStore::Kubernetes { .. } => write!(f, "DynamoStore::Kubernetes"),
        }
    }
}

impl DynamoStore {
    /// Every live record of `bucket` (`v1/instances`, `v1/mdc`), as (key without the bucket, bytes).
    pub async fn list(&self, bucket: &'static str) -> Result<Vec<(String, Vec<u8>)>, String> {
        match self {
            DynamoStore::File { root, ttl } => {
                let (folder, ttl) = (root.join(bucket), *ttl);
                tokio::task::spawn_blocking(move || list_folder(&folder, ttl))
                    .await
                    .map_err(|e| format!("reading Dynamo's file store failed: {e}"))?
            }
            #[cfg(feature = "kubernetes")]
            DynamoStore::Kubernetes { discovery } => Ok(discovery.dynamo_records(bucket)),
            DynamoStore::Etcd { client } => {
                let prefix = format!("{bucket}/");
                let options = etcd_client::GetOptions::new().with_prefix().with_limit(MAX_RECORDS as i64);
                let response = client
                    .clone()
                    .get(prefix.as_str(), Some(options))
                    .await
                    .map_err(|e| format!("reading Dynamo's records from etcd failed: {e}"))?;
                Ok(response
                    .kvs()
                    .iter()
                    .filter(|kv| kv.value().len() as u64 <= MAX_RECORD_BYTES)
                    .filter_map(|kv| {
                        let key = std::str::from_utf8(kv.key()).ok()?.strip_prefix(prefix.as_str())?;
                        Some((key.to_string(), kv.value().to_vec()))
                    })
                    .collect())
            }
        }
    }
}

fn list_folder(folder: &std::path::Path, ttl: Duration) -> Result<Vec<(String, Vec<u8>)>, String> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list {}: {}", folder.display(), e.kind())),
    };
    let now = SystemTime::now();
    let mut records = Vec::new();
    for entry in entries.flatten().take(MAX_RECORDS) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // `.tmp_<hex>`: a record being written.
        if name.starts_with('.') {
            continue;
        }
        let Ok(metadata) = entry.metadata() else { continue };
        if !metadata.is_file() {
            continue;
        }
        let fresh = metadata.modified().ok().and_then(|modified| now.duration_since(modified).ok()).is_none_or(|age| age <= ttl);
        if !fresh {
            continue;
        }
        if metadata.len() > MAX_RECORD_BYTES {
            tracing::warn!(record = name, bytes = metadata.len(), "a Dynamo record over {MAX_RECORD_BYTES} bytes is ignored");
            continue;
        }
        let Some(key) = percent_decode(name) else {
            tracing::warn!(record = name, "a Dynamo record's file name is not a percent-encoded key; it is ignored");
            continue;
        };
        // A record removed between listing and reading is simply gone.
        if let Ok(bytes) = std::fs::read(entry.path()) {
            records.push((key, bytes));
        }
    }
    Ok(records)
}

/// Dynamo's file names: every byte that is not an ASCII letter or digit written as `%XX`.
pub fn percent_decode(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The inverse, for the records a Tritium worker writes in Dynamo's layout.
pub fn percent_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 2);
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn file_names_decode_as_dynamo_writes_them() {
        assert_eq!(
            percent_decode("dynamo%2Fbackend%2Fworker%5Fkv%5Fquery%5Fsource%2D1").unwrap(),
            "dynamo/backend/worker_kv_query_source-1"
        );
        assert_eq!(percent_encode("ns1/backend/generate/3070b5c16a55d2a1"), "ns1%2Fbackend%2Fgenerate%2F3070b5c16a55d2a1");
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }

    #[tokio::test]
    async fn stale_and_temporary_files_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join("v1/instances");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("ns%2Fa"), b"live").unwrap();
        std::fs::write(folder.join(".tmp_1234"), b"half").unwrap();
        let stale = folder.join("ns%2Fb");
        std::fs::write(&stale, b"dead").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options().write(true).open(&stale).unwrap().set_modified(old).unwrap();
        let store = DynamoStore::File { root: root.path().to_path_buf(), ttl: FILE_TTL };
        let records = store.list("v1/instances").await.unwrap();
        assert_eq!(records, vec![("ns/a".to_string(), b"live".to_vec())]);
        assert!(store.list("v1/mdc").await.unwrap().is_empty());
    }
}
