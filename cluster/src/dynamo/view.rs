//! The Dynamo workers a frontend sees: the store's endpoint and model records joined by
//! instance, each model card made into a [`ModelCard`] once, offered to the router as
//! [`WorkerInstance`]s beside Tritium's own workers. Polled, since neither store's change feed
//! is needed to stay within a fraction of Dynamo's TTLs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tritium_backend_api::llm::ModelCard;

use super::TESTED_VERSION;
use super::records::{EndpointRecord, Record};
use super::store::DynamoStore;
pub use crate::discovery::dynamo_target::{DynamoEndpoint, DynamoModel, DynamoTarget, PayloadCodec, TextApis};
use crate::discovery::{DisaggregationMode, NamespaceScope, WorkerAddress, WorkerInstance};

const POLL_EVERY: Duration = Duration::from_millis(500);

/// What following Dynamo's records gives: its workers, and the ZeroMQ endpoints its workers
/// publish KV events on.
pub struct DynamoFollow {
    pub workers: watch::Receiver<Arc<Vec<WorkerInstance>>>,
    pub kv_publishers: watch::Receiver<Arc<Vec<String>>>,
}

/// Follows the store until `stop`, publishing the Dynamo workers of the watched namespaces.
pub fn follow(store: DynamoStore, scope: NamespaceScope, stop: CancellationToken) -> DynamoFollow {
    let (sender, workers) = watch::channel(Arc::new(Vec::new()));
    let (publishers_sender, kv_publishers) = watch::channel(Arc::new(Vec::new()));
    tokio::spawn(async move {
        let mut view = View::new(scope);
        loop {
            publish(&sender, view.refresh(&store).await);
            publish(&publishers_sender, view.kv_publishers(&store).await);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    });
    DynamoFollow { workers, kv_publishers }
}

/// Tells the watchers of `sender` of `listed` when it differs from what they saw last.
fn publish<T: PartialEq>(sender: &watch::Sender<Arc<Vec<T>>>, listed: Result<Vec<T>, String>) {
    match listed {
        Ok(listed) => {
            sender.send_if_modified(|current| {
                let changed = **current != listed;
                if changed {
                    *current = Arc::new(listed);
                }
                changed
            });
        }
        Err(e) => tracing::warn!("{e}"),
    }
}

struct View {
    scope: NamespaceScope,
    http: reqwest::Client,
    /// Cards made so far, by the digest of their model record (errors too, so each is logged once).
    cards: HashMap<blake3::Hash, Result<Arc<ModelCard>, String>>,
    warned: HashSet<String>,
}

impl View {
    fn new(scope: NamespaceScope) -> View {
        View { scope, http: super::card::http_client(), cards: HashMap::new(), warned: HashSet::new() }
    }

    fn warn_once(&mut self, key: &str, message: &str) {
        if self.warned.insert(format!("{key}\0{message}")) {
            tracing::warn!(record = key, "{message}");
        }
    }

    /// The ZeroMQ endpoints of the `kv-events` channels of the watched namespaces.
    async fn kv_publishers(&mut self, store: &DynamoStore) -> Result<Vec<String>, String> {
        let mut endpoints = Vec::new();
        for (key, bytes) in store.list("v1/event_channels").await? {
            match super::records::EventChannel::parse(&format!("v1/event_channels/{key}"), &bytes) {
                Ok(channel) if channel.topic == "kv-events" && self.scope.watches(channel.namespace()) => {
                    if let Some(endpoint) = channel.zmq_endpoint() {
                        endpoints.push(endpoint.to_string());
                    }
                }
                Ok(_) => {}
                Err(e) => self.warn_once(&key, &e),
            }
        }
        endpoints.sort();
        endpoints.dedup();
        Ok(endpoints)
    }

    /// The target of the endpoint `id`, added on first use.
    fn target<'a>(
        &self,
        targets: &'a mut BTreeMap<String, DynamoTarget>,
        id: &(String, String, String, u64),
        endpoint: &EndpointRecord,
    ) -> &'a mut DynamoTarget {
        let key = format!("{}/{}/{}/{:x}", id.0, id.1, id.2, id.3);
        targets.entry(key.clone()).or_insert_with(|| DynamoTarget {
            key,
            instance_id: id.3,
            mode: DisaggregationMode::Agg,
            endpoint: endpoint.reached(),
            codec: match endpoint.request_plane_codec.as_deref() {
                Some("msgpack") => PayloadCodec::Msgpack,
                _ => PayloadCodec::Json,
            },
            models: Vec::new(),
        })
    }

    async fn refresh(&mut self, store: &DynamoStore) -> Result<Vec<WorkerInstance>, String> {
        let endpoints = store.list("v1/instances").await?;
        let models = store.list("v1/mdc").await?;
        let mut listeners: HashMap<(String, String, String, u64), EndpointRecord> = HashMap::new();
        for (key, bytes) in endpoints {
            match Record::parse(&format!("v1/instances/{key}"), &bytes) {
                Ok(Record::Endpoint(endpoint)) if self.scope.watches(&endpoint.namespace) => {
                    let id =
                        (endpoint.namespace.clone(), endpoint.component.clone(), endpoint.endpoint.clone(), endpoint.instance_id);
                    listeners.insert(id, endpoint);
                }
                Ok(_) => {}
                Err(e) => self.warn_once(&key, &e),
            }
        }
        let mut targets: BTreeMap<String, DynamoTarget> = BTreeMap::new();
        let mut seen = HashSet::new();
        let mut listed = Vec::new();
        for (key, bytes) in models {
            let digest = blake3::hash(&bytes);
            seen.insert(digest);
            match Record::parse(&format!("v1/mdc/{key}"), &bytes) {
                Ok(Record::Model(record)) if self.scope.watches(&record.namespace) => listed.push((key, digest, record)),
                Ok(_) => {}
                Err(e) => self.warn_once(&key, &e),
            }
        }
        // The roles of the live workers serving each model, which the cards' `needs` name.
        let mut roles: HashMap<(String, String), HashSet<String>> = HashMap::new();
        for (_, _, record) in &listed {
            let id = (record.namespace.clone(), record.component.clone(), record.endpoint.clone(), record.instance_id);
            if listeners.contains_key(&id) && record.card_json.bootstrap().is_ok() {
                let model = (record.namespace.clone(), record.card_json.display_name.clone());
                roles.entry(model).or_default().insert(record.card_json.role().to_string());
            }
        }
        for (key, digest, record) in listed {
            let id = (record.namespace.clone(), record.component.clone(), record.endpoint.clone(), record.instance_id);
            let Some(endpoint) = listeners.get(&id) else { continue };
            let card = &record.card_json;
            let role = card.role();
            let mode = match role {
                "aggregated" => DisaggregationMode::Agg,
                "prefill" => DisaggregationMode::Prefill,
                "decode" => DisaggregationMode::Decode,
                other => {
                    let message = format!("model '{}' is on a Dynamo '{other}' worker, which this frontend does not serve", card.display_name);
                    self.warn_once(&key, &message);
                    continue;
                }
            };
            let bootstrap = match card.bootstrap() {
                Ok(bootstrap) => bootstrap,
                Err(e) => {
                    self.warn_once(&key, &format!("model '{}' (prefill) is not served: {e}", card.display_name));
                    continue;
                }
            };
            let present = roles.get(&(record.namespace.clone(), card.display_name.clone())).cloned().unwrap_or_default();
            if !card.needs_met(&present) {
                // As Dynamo's frontend: not served until the peers it needs are up.
                let message = format!("model '{}' ({role}) waits for the workers it needs: {:?}", card.display_name, card.needs);
                self.warn_once(&key, &message);
                continue;
            }
            if card.tensor_based() {
                let config = card.tensor_model_config.clone().unwrap_or_default();
                match super::tensor::model_config(&card.display_name, &config) {
                    Ok(config) => {
                        let target = self.target(&mut targets, &id, endpoint);
                        target.models.push(DynamoModel {
                            name: card.display_name.clone(),
                            card: None,
                            tensor: Some(Arc::new(config)),
                            digest,
                            token_budget: None,
                            lora: None,
                            kv_block_size: 0,
                            text_input: None,
                            bootstrap: None,
                        });
                    }
                    Err(e) => self.warn_once(&key, &format!("Dynamo tensor model '{}' cannot be served: {e}", card.display_name)),
                }
                continue;
            }
            if card.model_input != "Text" && !card.generates() && !card.embeds() && mode != DisaggregationMode::Prefill {
                let message = format!(
                    "model '{}' ({}) is not served: this frontend serves Dynamo language, embedding and tensor models",
                    card.display_name, card.model_type
                );
                self.warn_once(&key, &message);
                continue;
            }
            if card.model_input == "Text" {
                let apis = TextApis::from_flags(card.model_types());
                if !apis.any() {
                    let message = format!(
                        "model '{}' ({}) takes text: this frontend serves Dynamo text-input workers that chat, complete, embed, classify or rerank",
                        card.display_name, card.model_type
                    );
                    self.warn_once(&key, &message);
                    continue;
                }
                let target = self.target(&mut targets, &id, endpoint);
                target.models.push(DynamoModel {
                    name: card.display_name.clone(),
                    card: Some(Arc::new(super::card::text_input_card(card))),
                    tensor: None,
                    digest,
                    token_budget: None,
                    lora: None,
                    kv_block_size: 0,
                    text_input: Some(apis),
                    bootstrap: None,
                });
                continue;
            }
            if card.model_input != "Tokens" {
                let message = format!(
                    "model '{}' takes '{}' input; this frontend serves Dynamo workers that take tokens, text or tensors",
                    card.display_name, card.model_input
                );
                self.warn_once(&key, &message);
                continue;
            }
            let made = match self.cards.get(&digest) {
                Some(made) => made.clone(),
                None => {
                    let made = super::card::model_card(card, &self.http).await.map(Arc::new);
                    self.cards.insert(digest, made.clone());
                    made
                }
            };
            let model_card = match made {
                Ok(model_card) => model_card,
                Err(e) => {
                    self.warn_once(&key, &format!("Dynamo model '{}' cannot be served: {e}", card.display_name));
                    continue;
                }
            };
            let target = self.target(&mut targets, &id, endpoint);
            target.mode = mode;
            target.models.push(DynamoModel {
                name: card.display_name.clone(),
                card: Some(model_card),
                tensor: None,
                digest,
                token_budget: card.token_budget(),
                // An adapter's record has a suffix and its card names it; requests name it as their model.
                lora: record.model_suffix.as_ref().and(card.lora.as_ref()).map(|lora| lora.name.clone()),
                kv_block_size: card.kv_cache_block_size,
                text_input: None,
                bootstrap,
            });
        }
        self.cards.retain(|digest, _| seen.contains(digest));
        Ok(targets
            .into_values()
            .map(|mut target| {
                target.models.sort_by(|a, b| a.name.cmp(&b.name));
                WorkerInstance {
                    id: format!("dynamo/{}", target.key),
                    models: target.models.iter().map(|m| m.name.clone()).collect(),
                    mode: target.mode,
                    address: WorkerAddress::Dynamo(Arc::new(target)),
                    events: None,
                    device: Default::default(),
                }
            })
            .collect())
    }
}

/// The models of a Dynamo worker as the router's remote-model table holds them: language
/// models with Tritium's KServe tensors for them and embedding models, tokenized by the cards'
/// tokenizers, and tensor models with the KServe config their cards carry.
pub fn remote_models(target: &DynamoTarget) -> Vec<crate::remote::RemoteModel> {
    target
        .models
        .iter()
        .map(|model| {
            let config = match (&model.tensor, &model.card) {
                (Some(config), _) => (**config).clone(),
                (None, card) => {
                    let mut config = tritium_proto::inference::ModelConfig {
                        name: model.name.clone(),
                        backend: "dynamo".into(),
                        ..Default::default()
                    };
                    // An embedding model has no KServe tensors (as Tritium's own): it is served on /v1/embeddings.
                    if card.as_ref().is_some_and(|card| card.kind == tritium_backend_api::llm::ModelKind::Generate) {
                        tritium_backend_api::llm::complete_llm_config(&mut config);
                    }
                    config
                }
            };
            crate::remote::RemoteModel {
                name: model.name.clone(),
                version: 1,
                config,
                card: model.card.clone(),
                labels: Vec::new(),
                adapter_of: None,
                adapter_kv_seed: None,
                text_input: model.text_input,
            }
        })
        .collect()
}

/// Says which Dynamo versions this frontend was tested against, for the start-up log.
pub fn describe() -> String {
    format!("serving Dynamo workers (tested with Dynamo {TESTED_VERSION})")
}
