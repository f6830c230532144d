//! Dynamo's workers behind Tritium's frontend: a Dynamo deployment's vLLM, SGLang, TensorRT-LLM,
//! mocker or Python workers, found where Dynamo's own frontend finds them and called as it
//! calls them, so every Tritium door serves them.
//!
//! - [`store`]: Dynamo's record stores (its file store, etcd), read bucket by bucket;
//! - [`records`]: the endpoint and model-card records in them;
//! - [`card`]: a card's tokenizer files, checksum-verified, made into Tritium's `ModelCard`;
//! - [`view`]: the records joined into workers the router adds beside its own;
//! - [`codec`], [`protocol`]: Dynamo's frames and the messages in them;
//! - [`kv_events`]: their KV events, in Dynamo's block hashes, for the KV-aware router;
//! - [`client`], [`call_home`]: one worker's request connections, and the server its response
//!   streams call home to; [`embed`], [`tensor`], [`text`]: the calls of embedding, tensor and
//!   text-input models, read item by item ([`items`]); [`tls`]: both planes under TLS;
//! - [`worker`]: the other way round, a Tritium worker registered and served in Dynamo's layout.
//!
//! The wire contract is Dynamo's own, read off Dynamo [`TESTED_VERSION`]; what Tritium cannot
//! read is refused with that version named, never guessed at.

mod bootstrap;
pub mod call_home;
pub mod card;
pub mod client;
pub mod codec;
pub mod embed;
pub mod items;
pub mod kv_events;
mod kv_follow;
pub mod preprocessed;
pub mod protocol;
pub mod records;
pub mod store;
pub mod tensor;
pub mod text;
pub mod tls;
mod token_stream;
pub mod view;
pub mod worker;

pub use call_home::CallHome;
pub use client::DynamoWorker;
pub use kv_follow::{DynamoEventPlane, KvSink, event_plane_for, follow_kv_events};
pub use store::DynamoStore;
pub use tls::{DynamoTls, PlaneStream};
pub use view::{DynamoFollow, DynamoTarget, follow};

/// The largest Dynamo frame either side reads or sends by default, as Dynamo's own
/// (`DYN_TCP_MAX_MESSAGE_SIZE`, `--tcp-max-message-size`); a smaller `--max-message-size` (or a
/// worker's `--worker-max-message-size`) lowers it.
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// The Dynamo release whose workers and frontend this was written against and tested with.
pub const TESTED_VERSION: &str = "1.6.1";

/// The Dynamo record store beside Tritium's own discovery backend: the same folder, etcd, or
/// Kubernetes namespace (`None` for the in-memory backend).
pub async fn store_for(discovery: &crate::discovery::DiscoveryConfig) -> Result<Option<DynamoStore>, String> {
    use crate::discovery::DiscoveryConfig;
    Ok(match discovery {
        DiscoveryConfig::File { dir } => Some(DynamoStore::File { root: dir.clone(), ttl: store::FILE_TTL }),
        DiscoveryConfig::Etcd { endpoints } => {
            let (options, used) = crate::credentials::etcd_options_from_env(etcd_client::ConnectOptions::new())?;
            let client = etcd_client::Client::connect(endpoints, Some(options)).await.map_err(|e| {
                format!("reading Dynamo's records: cannot reach etcd at {}: {e}{}", endpoints.join(","), used.hint())
            })?;
            Some(DynamoStore::Etcd { client })
        }
        #[cfg(feature = "kubernetes")]
        DiscoveryConfig::Kubernetes(config) => {
            // Every namespace's records: the view keeps the watched ones.
            let scope = crate::discovery::NamespaceScope { own: "dynamo".into(), watch_prefix: Some(String::new()) };
            let discovery = crate::discovery::kubernetes::KubeDiscovery::connect(config, &scope)
                .await
                .map_err(|e| format!("reading Dynamo's records: {e}"))?;
            Some(DynamoStore::Kubernetes { discovery: std::sync::Arc::new(discovery) })
        }
        _ => None,
    })
}
