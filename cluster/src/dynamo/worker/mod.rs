//! `tritium worker --worker-protocol dynamo`: a Tritium worker in Dynamo's layout, so Dynamo's
//! own frontend (and Tritium's, which reads the same records) serves its language, embedding
//! and tensor models. Each model gets an endpoint record and a model card in Dynamo's store (a
//! language or embedding model's tokenizer files written beside, with their checksums; a tensor
//! model's KServe config inside), and the worker takes Dynamo's request frames on its own TCP
//! listener (under TLS with Dynamo's `DYN_TCP_TLS_*`, as Dynamo's own workers).

mod card_files;
mod home;
mod kv_publish;
mod registration;
mod serve;
mod tensor_serve;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tritium_worker::{LocalWorker, ModelRepository};

use super::store::DynamoStore;
use registration::{RecordEntry, Registrar};

/// How the worker registers and listens.
#[derive(Debug, Clone)]
pub struct DynamoWorkerConfig {
    /// The address its request listener binds and advertises (Dynamo's `DYN_TCP_RPC_HOST`).
    pub rpc_host: IpAddr,
    pub namespace: String,
    /// The component its endpoints belong to.
    pub component: String,
    pub max_message_size: usize,
    /// Tokens per KV block, as its cards say.
    pub block_size: usize,
    /// How its listener accepts and its response streams dial home.
    pub tls: super::DynamoTls,
    /// Where its ZeroMQ KV-event publisher may bind (loopback unless the network is trusted).
    pub zmq_network: crate::events::zmq::ZmqNetwork,
}

/// Registers the language models of `repository` in `store` and serves them until `stop`; the
/// records are removed and the card files deleted then. Returns the task to await on the way out.
pub async fn start(
    store: DynamoStore,
    repository: Arc<ModelRepository>,
    config: DynamoWorkerConfig,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = TcpListener::bind(SocketAddr::new(config.rpc_host, 0))
        .await
        .map_err(|e| format!("binding the Dynamo request listener on {}: {e}", config.rpc_host))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    if let Some(warning) = config.tls.lopsided() {
        tracing::warn!("{warning}");
    }
    let registrar = Registrar::open(store).await?;
    let instance = registrar.instance_id;
    let cards_dir = std::env::temp_dir().join(format!("tritium-dynamo-{instance:x}"));
    let models: Vec<(String, Served)> = repository
        .local_models()
        .into_iter()
        .filter_map(|model| {
            let version = model.latest()?;
            let served = match (version.language_model(), version.embedding_model()) {
                (Some(language), _) => Served::Language(language.card().clone()),
                (None, Some(embedder)) => Served::Language(embedder.card().clone()),
                (None, None) => Served::Tensor(Arc::clone(&version.config)),
            };
            Some((model.name.clone(), served))
        })
        .collect();
    if models.is_empty() {
        return Err("--worker-protocol dynamo serves language, embedding and tensor models, and this worker loaded none".into());
    }
    config.zmq_network.check_bind(config.rpc_host, "the Dynamo KV-event publisher (DYN_TCP_RPC_HOST)")?;
    let publisher = Arc::new(kv_publish::Publisher::bind(config.rpc_host, instance).await?);
    let names = Arc::new(kv_publish::BlockNames::default());
    let engines = repository
        .local_models()
        .into_iter()
        .filter_map(|model| Some((model.name.clone(), model.latest()?.language_model()?.kv_events()?)))
        .collect();
    kv_publish::forward(Arc::clone(&publisher), Arc::clone(&names), engines, stop.clone());
    let mut records: Vec<RecordEntry> = Vec::new();
    let mut paths = Vec::new();
    for (name, served) in &models {
        let endpoint = if models.len() == 1 { "generate".to_string() } else { format!("generate_{}", segment_name(name)) };
        let path = [format!("{instance:x}"), config.namespace.clone(), config.component.clone(), endpoint.clone()]
            .iter()
            .map(|segment| escape(segment))
            .collect::<Vec<_>>()
            .join("/");
        let key = format!("{}/{}/{endpoint}/{instance:x}", config.namespace, config.component);
        let card_json = match served {
            Served::Language(card) => card_files::write_card(&cards_dir.join(segment_name(name)), name, card, config.block_size).await?,
            Served::Tensor(model_config) => card_files::tensor_card(name, model_config),
        };
        let common =
            json!({"namespace": config.namespace, "component": config.component, "endpoint": endpoint, "instance_id": instance});
        let mut endpoint_record = common.clone();
        endpoint_record["type"] = "Endpoint".into();
        endpoint_record["transport"] = json!({"tcp": format!("{address}/{path}")});
        endpoint_record["request_plane_codec"] = "json".into();
        let mut model_record = common;
        model_record["type"] = "Model".into();
        model_record["card_json"] = card_json;
        let channel = json!({
            "type": "EventChannel",
            "scope": {"kind": "endpoint", "endpoint": {"namespace": config.namespace, "component": config.component, "name": endpoint}},
            "topic": "kv-events",
            "instance_id": publisher.publisher_id,
            "transport": {"kind": "Zmq", "config": {"endpoint": publisher.endpoint}},
        });
        let channel_key = format!(
            "namespace/{}/component/{}/endpoint/{endpoint}/topic/kv-events/{:x}",
            config.namespace, config.component, publisher.publisher_id
        );
        if matches!(served, Served::Language(card) if card.kind == tritium_backend_api::llm::ModelKind::Generate) {
            records.push(("v1/event_channels", channel_key, channel.to_string().into_bytes()));
        }
        records.push(("v1/instances", key.clone(), endpoint_record.to_string().into_bytes()));
        records.push(("v1/mdc", key, model_record.to_string().into_bytes()));
        paths.push(path);
    }
    let serving = serve::Served {
        worker: Arc::new(LocalWorker::new(repository)),
        endpoint_paths: paths,
        max_message_size: config.max_message_size,
        names,
        block_size: config.block_size,
        tls: config.tls.clone(),
    };
    let serving = tokio::spawn(serve::serve(listener, serving, stop.clone()));
    let keeping = registrar.register(records, stop.clone()).await?;
    tracing::info!(instance = format!("{instance:x}"), %address, models = ?models.iter().map(|m| &m.0).collect::<Vec<_>>(), "registered in Dynamo's layout");
    Ok(tokio::spawn(async move {
        let _ = keeping.await;
        let _ = serving.await;
        remove_cards(cards_dir);
    }))
}

/// What a model is registered as.
enum Served {
    /// Token input (a language or an embedding model), with its tokenizer files beside the card.
    Language(Arc<tritium_backend_api::llm::ModelCard>),
    /// Tensor input, its KServe config in the card (as `dynamo.triton` registers Triton's models).
    Tensor(Arc<tritium_proto::inference::ModelConfig>),
}

/// Dynamo escapes `%` and `/` in each segment of an endpoint path.
fn escape(segment: &str) -> String {
    segment.replace('%', "%25").replace('/', "%2F")
}

/// A model name as one path segment (for endpoint names and card folders).
fn segment_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

fn remove_cards(dir: PathBuf) {
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(folder = %dir.display(), "removing the Dynamo card files failed: {e}");
    }
}
