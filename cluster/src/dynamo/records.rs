//! Dynamo's discovery records as its workers write them (`v1/instances` and `v1/mdc`), and the
//! parts of the model deployment card a frontend acts on. Unknown fields are ignored (Dynamo
//! adds fields between versions); a record that cannot be read is refused with the version this
//! reader was written for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::TESTED_VERSION;
use crate::discovery::dynamo_target::{BootstrapEndpoint, DynamoEndpoint, TokenBudget};

/// One record of a KV-store bucket, told apart by its `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum Record {
    Endpoint(EndpointRecord),
    Model(ModelRecord),
    /// Event channels and sources, and kinds from later versions.
    #[serde(other)]
    Other,
}

impl Record {
    /// Parses a record, naming its key and the version this reader knows when it cannot.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Record, String> {
        serde_json::from_slice(bytes)
            .map_err(|e| format!("Dynamo record {key} is not a record Dynamo {TESTED_VERSION} writes ({e}); it is ignored"))
    }
}

/// A worker endpoint: where its request listener is.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct EndpointRecord {
    pub namespace: String,
    pub component: String,
    pub endpoint: String,
    /// Can exceed 2^53: read as an integer.
    pub instance_id: u64,
    pub transport: Transport,
    /// Absent before Dynamo 1.4: JSON.
    #[serde(default)]
    pub request_plane_codec: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// `host:port/{instance:x}/{namespace}/{component}/{endpoint}`.
    Tcp(String),
    /// A NATS subject `{namespace}_{component}.{endpoint}-{instance:x}`.
    NatsTcp(String),
}

impl EndpointRecord {
    /// How requests reach the endpoint.
    pub fn reached(&self) -> DynamoEndpoint {
        match &self.transport {
            Transport::Tcp(address) => {
                let (address, path) = address.split_once('/').unwrap_or((address, ""));
                DynamoEndpoint::Tcp { address: address.to_string(), path: path.to_string() }
            }
            Transport::NatsTcp(subject) => DynamoEndpoint::Nats { subject: subject.clone() },
        }
    }
}

/// A model a worker instance serves, with its card.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelRecord {
    pub namespace: String,
    pub component: String,
    pub endpoint: String,
    pub instance_id: u64,
    pub card_json: Card,
    /// A LoRA adapter's slug, for records of adapters.
    #[serde(default)]
    pub model_suffix: Option<String>,
}

/// The model deployment card: the fields a frontend uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Card {
    pub display_name: String,
    #[serde(default)]
    pub slug: Option<String>,
    /// `{"hf_config_json": file}`.
    #[serde(default)]
    pub model_info: Option<BTreeMap<String, CheckedFile>>,
    /// `{"hf_tokenizer_json": file}` (other tokenizer kinds are refused by name).
    #[serde(default)]
    pub tokenizer: Option<BTreeMap<String, CheckedFile>>,
    /// `{"hf_tokenizer_config_json": file}`.
    #[serde(default)]
    pub prompt_formatter: Option<BTreeMap<String, CheckedFile>>,
    /// A chat template kept in its own file.
    #[serde(default)]
    pub chat_template_file: Option<BTreeMap<String, CheckedFile>>,
    /// `{"hf_generation_config_json": file}`.
    #[serde(default)]
    pub gen_config: Option<BTreeMap<String, CheckedFile>>,
    #[serde(default)]
    pub context_length: u64,
    #[serde(default)]
    pub architectural_max_context_length: Option<u64>,
    #[serde(default)]
    pub kv_cache_block_size: u64,
    /// Flags joined with `" | "`: `Chat`, `Completions`, `Embedding`, `TensorBased`, `Prefill`, ...
    #[serde(default)]
    pub model_type: String,
    /// `Tokens`, `Text` or `Tensor`.
    #[serde(default)]
    pub model_input: String,
    /// `aggregated`, `prefill`, `decode` or `encode` (absent before Dynamo 1.2: aggregated).
    #[serde(default)]
    pub worker_type: Option<String>,
    /// The peers it needs to serve, in disjunctive normal form: any one list whose worker
    /// types are all present (`[["prefill"]]` for a decode worker).
    #[serde(default)]
    pub needs: Vec<Vec<String>>,
    #[serde(default)]
    pub runtime_config: Option<RuntimeConfig>,
    /// A LoRA adapter's card names the adapter (its requests name it as their model).
    #[serde(default)]
    pub lora: Option<LoraInfo>,
    /// A tensor model's contract (`model_input: Tensor`, as `dynamo.triton` registers Triton's models).
    #[serde(default)]
    pub tensor_model_config: Option<TensorModelConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoraInfo {
    pub name: String,
}

/// Dynamo's `TensorModelConfig`: inputs and outputs, or Triton's whole `ModelConfig` as protobuf
/// bytes, which supersedes them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TensorModelConfig {
    #[serde(default)]
    pub inputs: Vec<TensorMetadata>,
    #[serde(default)]
    pub outputs: Vec<TensorMetadata>,
    #[serde(default)]
    pub triton_model_config: Option<Vec<u8>>,
}

/// A tensor's name, Dynamo data type (`Float32`, `Bytes`, ...) and shape.
#[derive(Debug, Clone, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub data_type: String,
    #[serde(default)]
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub tool_call_parser: Option<String>,
    #[serde(default)]
    pub reasoning_parser: Option<String>,
    #[serde(default)]
    pub engine_specific: Option<Json>,
    #[serde(default)]
    pub runtime_data: Option<Json>,
    /// A prefill worker's bootstrap rendezvous (`{bootstrap_host, bootstrap_port}`: SGLang's, the
    /// mocker's with `--bootstrap-ports`), where the decode request goes out beside the prefill.
    #[serde(default)]
    pub disaggregated_endpoint: Option<Json>,
}

/// A file the card names, with its size and blake3 checksum (`blake3:<hex>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckedFile {
    pub path: String,
    pub checksum: String,
    #[serde(default)]
    pub size: Option<u64>,
}

/// An event channel: where a worker publishes one topic (`kv-events`, `kv_metrics`, ...).
#[derive(Debug, Clone, Deserialize)]
pub struct EventChannel {
    pub scope: ChannelScope,
    pub topic: String,
    pub transport: ChannelTransport,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChannelScope {
    #[serde(default)]
    pub endpoint: Option<ScopeEndpoint>,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ScopeEndpoint {
    pub namespace: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChannelTransport {
    pub kind: String,
    #[serde(default)]
    pub config: Option<Json>,
}

impl EventChannel {
    pub fn parse(key: &str, bytes: &[u8]) -> Result<EventChannel, String> {
        serde_json::from_slice(bytes).map_err(|e| {
            format!("Dynamo record {key} is not an event channel Dynamo {TESTED_VERSION} writes ({e}); it is ignored")
        })
    }

    pub fn namespace(&self) -> &str {
        match (&self.scope.endpoint, &self.scope.namespace) {
            (Some(endpoint), _) => &endpoint.namespace,
            (None, Some(namespace)) => namespace,
            (None, None) => "",
        }
    }

    /// The publisher's endpoint, for a direct ZeroMQ channel.
    pub fn zmq_endpoint(&self) -> Option<&str> {
        (self.transport.kind == "Zmq").then(|| self.transport.config.as_ref()?.get("endpoint")?.as_str()).flatten()
    }
}

impl Card {
    pub fn model_types(&self) -> impl Iterator<Item = &str> {
        self.model_type.split('|').map(str::trim).filter(|flag| !flag.is_empty())
    }

    pub fn generates(&self) -> bool {
        self.model_types().any(|flag| flag == "Chat" || flag == "Completions")
    }

    pub fn embeds(&self) -> bool {
        self.model_types().any(|flag| flag == "Embedding")
    }

    /// A tensor model: `TensorBased`, taking `Tensor` input.
    pub fn tensor_based(&self) -> bool {
        self.model_input == "Tensor" && self.model_types().any(|flag| flag == "TensorBased")
    }

    /// The longest prompt plus completion: the card's context length, else the architecture's.
    pub fn context_length(&self) -> Option<u64> {
        Some(self.context_length).filter(|&n| n > 0).or(self.architectural_max_context_length.filter(|&n| n > 0))
    }

    pub fn token_budget(&self) -> Option<TokenBudget> {
        // `runtime_data` in 1.6.1; `engine_specific` in the releases before.
        let config = self.runtime_config.as_ref()?;
        let budget = [&config.runtime_data, &config.engine_specific]
            .into_iter()
            .find_map(|place| place.as_ref()?.get("token_budget"))?;
        // Dynamo's workers publish it as JSON text inside the card.
        let parsed;
        let budget = match budget {
            Json::String(text) => {
                parsed = serde_json::from_str::<Json>(text).ok()?;
                &parsed
            }
            other => other,
        };
        let combined_limit = budget.get("combined_limit")?.as_u64()?;
        let flag = |name: &str| budget.get(name).and_then(Json::as_bool).unwrap_or(false);
        Some(TokenBudget {
            combined_limit,
            reject_prompt_overflow: flag("reject_prompt_overflow"),
            reject_total_overflow: flag("reject_total_overflow"),
        })
    }

    /// The worker's role in a disaggregated deployment (Dynamo 1.2+'s `worker_type`; a card
    /// without one is aggregated, a `Prefill` model type a prefill worker).
    pub fn role(&self) -> &str {
        match self.worker_type.as_deref() {
            Some(role) => role,
            None if self.model_types().any(|flag| flag == "Prefill") => "prefill",
            None => "aggregated",
        }
    }

    /// Whether this is a prefill worker whose card names a bootstrap rendezvous at all (read or not).
    pub fn bootstraps(&self) -> bool {
        let endpoint = self.runtime_config.as_ref().and_then(|config| config.disaggregated_endpoint.as_ref());
        self.role() == "prefill" && endpoint.is_some_and(|endpoint| !endpoint.is_null())
    }

    /// A prefill worker's bootstrap rendezvous: where its decode worker meets it to move the
    /// blocks; an error when the card names one this frontend cannot read.
    pub fn bootstrap(&self) -> Result<Option<BootstrapEndpoint>, String> {
        if !self.bootstraps() {
            return Ok(None);
        }
        let endpoint = self.runtime_config.as_ref().and_then(|config| config.disaggregated_endpoint.as_ref());
        let field = |name: &str| endpoint.and_then(|endpoint| endpoint.get(name));
        let host = field("bootstrap_host").and_then(Json::as_str).filter(|host| !host.is_empty());
        let port = field("bootstrap_port").and_then(Json::as_u64).and_then(|port| u16::try_from(port).ok());
        match (host, port) {
            (Some(host), Some(port)) if port > 0 => Ok(Some(BootstrapEndpoint { host: host.to_string(), port })),
            _ => Err("its card's disaggregated_endpoint has no bootstrap_host and bootstrap_port".to_string()),
        }
    }

    /// Whether the peers its `needs` name are present (`present`: the roles of the workers that
    /// serve the same model); a card needing nothing always is.
    pub fn needs_met(&self, present: &std::collections::HashSet<String>) -> bool {
        self.needs.is_empty() || self.needs.iter().any(|all| all.iter().all(|role| present.contains(role)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ENDPOINT: &str = r#"{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"dynamo",
        "instance_id":17718393618540674277,
        "transport":{"tcp":"127.0.0.1:34071/f5e4611eb7aa3ce5/dynamo/backend/generate"},
        "device_type":"cuda","request_plane_codec":"msgpack"}"#;

    #[test]
    fn roles_and_needs_are_read_as_dynamo_writes_them() {
        let card = |extra: &str| -> Card {
            serde_json::from_str(&format!(r#"{{"display_name":"m","model_type":"Chat","model_input":"Tokens"{extra}}}"#)).unwrap()
        };
        let decode = card(r#","worker_type":"decode","needs":[["prefill"]]"#);
        assert_eq!(decode.role(), "decode");
        let present = |roles: &[&str]| roles.iter().map(|r| r.to_string()).collect::<std::collections::HashSet<_>>();
        assert!(!decode.needs_met(&present(&["decode"])));
        assert!(decode.needs_met(&present(&["decode", "prefill"])));
        let either = card(r#","worker_type":"encode","needs":[["prefill","decode"],["aggregated"]]"#);
        assert!(either.needs_met(&present(&["aggregated"])) && !either.needs_met(&present(&["prefill"])));
        assert_eq!(card("").role(), "aggregated", "a card from before 1.2 is aggregated");
        assert!(card("").needs_met(&present(&[])));
        let prefill: Card = serde_json::from_str(
            r#"{"display_name":"m","model_type":"Prefill","model_input":"Tokens",
                "runtime_config":{"disaggregated_endpoint":{"bootstrap_host":"h","bootstrap_port":1}}}"#,
        )
        .unwrap();
        assert_eq!(prefill.role(), "prefill");
        assert!(prefill.bootstraps());
        assert_eq!(prefill.bootstrap(), Ok(Some(BootstrapEndpoint { host: "h".into(), port: 1 })));
        let unreadable: Card = serde_json::from_str(
            r#"{"display_name":"m","model_type":"Prefill","model_input":"Tokens",
                "runtime_config":{"disaggregated_endpoint":{"bootstrap_host":"h","bootstrap_port":70000}}}"#,
        )
        .unwrap();
        assert!(unreadable.bootstrap().unwrap_err().contains("bootstrap_port"));
        assert_eq!(card("").bootstrap(), Ok(None));
    }

    #[test]
    fn reads_the_mockers_records_as_captured() {
        let Record::Endpoint(endpoint) = Record::parse("k", ENDPOINT.as_bytes()).unwrap() else { panic!("not an endpoint") };
        assert_eq!(endpoint.instance_id, 17718393618540674277);
        assert_eq!(
            endpoint.reached(),
            DynamoEndpoint::Tcp { address: "127.0.0.1:34071".into(), path: "f5e4611eb7aa3ce5/dynamo/backend/generate".into() }
        );
        let model = r#"{"type":"Model","namespace":"ns1","component":"backend","endpoint":"generate",
            "instance_id":3490489553529459361,"card_json":{"display_name":"tiny","slug":"tiny",
            "tokenizer":{"hf_tokenizer_json":{"path":"/m/tokenizer.json","checksum":"blake3:a1","size":5218}},
            "architectural_max_context_length":4096,"context_length":0,"kv_cache_block_size":64,
            "model_type":"Chat | Completions","model_input":"Tokens","worker_type":"aggregated","needs":[],
            "runtime_config":{"runtime_data":{"token_budget":{"combined_limit":300,"reject_prompt_overflow":true}}},
            "media_decoder":null}}"#;
        let Record::Model(model) = Record::parse("k", model.as_bytes()).unwrap() else { panic!("not a model") };
        assert!(model.card_json.generates() && !model.card_json.embeds() && model.card_json.role() == "aggregated");
        assert_eq!(model.card_json.context_length(), Some(4096));
        assert_eq!(
            model.card_json.token_budget(),
            Some(TokenBudget { combined_limit: 300, reject_prompt_overflow: true, reject_total_overflow: false })
        );
        assert!(matches!(Record::parse("k", br#"{"type":"EventChannel","topic":"kv-events"}"#).unwrap(), Record::Other));
    }

    #[test]
    fn a_record_that_cannot_be_read_is_refused_naming_the_version() {
        let error = Record::parse("v1/instances/x", br#"{"type":"Endpoint","instance_id":"soon"}"#).unwrap_err();
        assert!(error.contains("v1/instances/x") && error.contains(TESTED_VERSION), "{error}");
        let error = Record::parse(
            "k",
            br#"{"type":"Endpoint","component":"c","endpoint":"e","namespace":"n",
            "instance_id":1,"transport":{"quic":"x"}}"#,
        )
        .unwrap_err();
        assert!(error.contains("quic"), "{error}");
    }
}
