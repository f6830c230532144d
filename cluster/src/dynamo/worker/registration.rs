//! A Tritium worker's records in Dynamo's layout, kept alive as Dynamo's own workers keep theirs:
//! in the file store, files named by their percent-encoded keys, written whole (a temporary file
//! renamed into place) and touched every third of the TTL; in etcd, keys under one lease kept
//! alive, whose id is the instance id; on Kubernetes, the pod's DynamoWorkerMetadata object
//! (liveness is the pod's readiness), the instance id its name's hash. All are removed on the
//! way out.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::dynamo::store::{DynamoStore, FILE_TTL, percent_encode};

/// etcd's lease on a Dynamo worker's keys (Dynamo's `ETCD_LEASE_TTL`).
const LEASE_TTL_SECS: i64 = 10;

/// One record: its bucket (`v1/instances`, `v1/mdc`), its key in the bucket and its JSON.
pub type RecordEntry = (&'static str, String, Vec<u8>);

pub struct Registrar {
    store: DynamoStore,
    /// This process's instance id (the etcd lease's id with etcd).
    pub instance_id: u64,
    lease: Option<i64>,
    written: Vec<PathBuf>,
}

impl Registrar {
    /// Picks the instance id: a lease granted in etcd, a random number with the file store.
    pub async fn open(store: DynamoStore) -> Result<Registrar, String> {
        let (instance_id, lease) = match &store {
            DynamoStore::Etcd { client } => {
                let lease = client
                    .clone()
                    .lease_grant(LEASE_TTL_SECS, None)
                    .await
                    .map_err(|e| format!("granting the Dynamo registration's etcd lease failed: {e}"))?;
                (lease.id() as u64, Some(lease.id()))
            }
            DynamoStore::File { .. } => (rand::random::<u64>() >> 1, None),
            #[cfg(feature = "kubernetes")]
            DynamoStore::Kubernetes { discovery } => (discovery.dynamo_instance_id()?, None),
        };
        Ok(Registrar { store, instance_id, lease, written: Vec::new() })
    }

    /// Writes `records` and keeps them alive until `stop`; then removes them.
    pub async fn register(
        mut self,
        records: Vec<RecordEntry>,
        stop: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        match &self.store {
            DynamoStore::File { root, .. } => {
                for (bucket, key, bytes) in &records {
                    let folder = root.join(bucket);
                    tokio::fs::create_dir_all(&folder).await.map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
                    let path = folder.join(percent_encode(key));
                    let temporary = folder.join(format!(".tmp_{:016x}", rand::random::<u64>()));
                    tokio::fs::write(&temporary, bytes)
                        .await
                        .map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
                    tokio::fs::rename(&temporary, &path).await.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                    self.written.push(path);
                }
            }
            DynamoStore::Etcd { client } => {
                let options = etcd_client::PutOptions::new().with_lease(self.lease.unwrap_or_default());
                for (bucket, key, bytes) in &records {
                    client
                        .clone()
                        .put(format!("{bucket}/{key}"), bytes.clone(), Some(options.clone()))
                        .await
                        .map_err(|e| format!("registering in etcd failed: {e}"))?;
                }
            }
            #[cfg(feature = "kubernetes")]
            DynamoStore::Kubernetes { discovery } => discovery
                .apply_dynamo_records(&records)
                .await
                .map_err(|e| format!("registering in Dynamo's Kubernetes layout failed: {e}"))?,
        }
        Ok(tokio::spawn(async move { self.keep_alive(stop).await }))
    }

    async fn keep_alive(self, stop: CancellationToken) {
        let every = match &self.store {
            DynamoStore::File { .. } => (FILE_TTL / 3).max(Duration::from_secs(1)),
            _ => Duration::from_secs((LEASE_TTL_SECS / 3).max(1) as u64),
        };
        let mut keeper = match (&self.store, self.lease) {
            (DynamoStore::Etcd { client }, Some(lease)) => match client.clone().lease_keep_alive(lease).await {
                Ok(keeper) => Some(keeper),
                Err(e) => {
                    tracing::warn!("keeping the Dynamo registration's etcd lease alive failed: {e}");
                    None
                }
            },
            _ => None,
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            match (&mut keeper, &self.store) {
                (Some((keeper, _)), _) => {
                    if let Err(e) = keeper.keep_alive().await {
                        tracing::warn!("renewing the Dynamo registration's etcd lease failed: {e}");
                    }
                }
                (None, DynamoStore::File { .. }) => {
                    for path in &self.written {
                        let touched =
                            std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(SystemTime::now()));
                        if let Err(e) = touched {
                            tracing::warn!(record = %path.display(), "touching a Dynamo record failed: {e}");
                        }
                    }
                }
                (None, _) => {}
            }
        }
        match (&self.store, self.lease) {
            (DynamoStore::Etcd { client }, Some(lease)) => {
                let _ = client.clone().lease_revoke(lease).await;
            }
            #[cfg(feature = "kubernetes")]
            (DynamoStore::Kubernetes { discovery }, _) => {
                if let Err(e) = discovery.remove_dynamo_records().await {
                    tracing::warn!("removing the Dynamo registration's object failed (its pod's deletion will): {e}");
                }
            }
            _ => {
                for path in &self.written {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}
