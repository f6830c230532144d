//! Each engine's standing, as the workers the router lists: an engine joins once its standard
//! `grpc.health.v1` service says SERVING (engines answer NOT_SERVING while they warm up) and it
//! has described its model; it leaves when the health check fails or stops answering, and
//! comes back when it is healthy again. Each check also reads the engine's loads (`GetLoads`)
//! for the router's load-aware modes; its KV events are followed once it has been described.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tritium_proto::engine::GetLoadsRequest;
use tritium_proto::engine::vllm_engine_client::VllmEngineClient;

use super::{CALL_TIMEOUT, CONNECT_TIMEOUT, EngineLimits, EngineSpec, EngineTarget};
use crate::discovery::{DeviceClass, DisaggregationMode, WorkerAddress, WorkerInstance};
use crate::events::LoadReport;

/// How often each engine's health and load are read.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Where engines' load reports go (the router's load table).
pub type LoadSink = Arc<dyn Fn(LoadReport) + Send + Sync>;

/// The engines listed and followed: the workers for the router, and a channel to each.
type Listed = Arc<Mutex<BTreeMap<String, WorkerInstance>>>;

/// Follows the engines of `specs` until `stop`; the receiver lists those ready to serve.
pub fn follow(
    specs: &[EngineSpec],
    limits: EngineLimits,
    loads: LoadSink,
    kv: super::kv::KvSink,
    stop: CancellationToken,
) -> watch::Receiver<Arc<Vec<WorkerInstance>>> {
    let (sender, receiver) = watch::channel(Arc::new(Vec::new()));
    let sender = Arc::new(sender);
    let listed: Listed = Arc::default();
    for spec in super::merged(specs) {
        for url in &spec.urls {
            let engine = Engine {
                id: engine_id(&spec.name, url),
                name: spec.name.clone(),
                url: url.clone(),
                limits,
                listed: Arc::clone(&listed),
                sender: Arc::clone(&sender),
                loads: Arc::clone(&loads),
                kv: Arc::clone(&kv),
            };
            tokio::spawn(engine.run(stop.clone()));
        }
    }
    receiver
}

/// The worker id of the engine at `url` serving `name`: both, so logs and a worker hint say which.
pub fn engine_id(name: &str, url: &str) -> String {
    format!("{name}@{}", url.trim_start_matches("http://"))
}

struct Engine {
    id: String,
    name: String,
    url: String,
    limits: EngineLimits,
    listed: Listed,
    sender: Arc<watch::Sender<Arc<Vec<WorkerInstance>>>>,
    loads: LoadSink,
    kv: super::kv::KvSink,
}

impl Engine {
    async fn run(self, stop: CancellationToken) {
        let channel = match Endpoint::from_shared(self.url.clone()) {
            Ok(endpoint) => endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true).connect_lazy(),
            Err(e) => {
                tracing::error!(engine = %self.id, "not an engine URL: {e}");
                return;
            }
        };
        let mut described: Option<Arc<EngineTarget>> = None;
        let mut following_kv = false;
        let mut said_why = String::new();
        loop {
            let standing = match health(&channel).await {
                Err(why) => Err(why),
                Ok(()) => match &described {
                    Some(target) => Ok(Arc::clone(target)),
                    None => match super::describe::describe(&self.name, &self.url, channel.clone(), &self.limits, None).await {
                        Ok(target) => {
                            tracing::info!(
                                engine = %self.id, served = %target.served_name, server = %target.server_type,
                                context = target.card.context_length, block_size = ?target.block_size,
                                "engine described its model"
                            );
                            let target = Arc::new(target);
                            described = Some(Arc::clone(&target));
                            // Its KV events, from now on (the follower resubscribes when they break).
                            if !std::mem::replace(&mut following_kv, true) {
                                tokio::spawn(super::kv::follow(
                                    channel.clone(),
                                    self.id.clone(),
                                    self.name.clone(),
                                    self.limits.max_message,
                                    Arc::clone(&self.kv),
                                    stop.clone(),
                                ));
                            }
                            Ok(target)
                        }
                        Err(why) => Err(format!("describing its model failed: {why}")),
                    },
                },
            };
            match standing {
                Ok(target) => {
                    said_why.clear();
                    self.list(Some(target));
                    self.read_loads(&channel).await;
                }
                Err(why) => {
                    if why != said_why {
                        tracing::warn!(engine = %self.id, "engine not serving: {why}");
                        said_why = why;
                    }
                    self.list(None);
                    // It may come back serving another model, or the same one differently.
                    described = None;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
        }
    }

    /// Lists the engine (with its description) or takes it off the list, telling the router on change.
    fn list(&self, target: Option<Arc<EngineTarget>>) {
        let mut listed = self.listed.lock();
        let changed = match target {
            Some(target) => {
                let instance = WorkerInstance {
                    id: self.id.clone(),
                    address: WorkerAddress::Engine(target),
                    models: vec![self.name.clone()],
                    mode: DisaggregationMode::Agg,
                    events: None,
                    device: DeviceClass::default(),
                };
                listed.insert(self.id.clone(), instance.clone()).is_none_or(|before| before != instance)
            }
            None => listed.remove(&self.id).is_some(),
        };
        if changed {
            self.sender.send_replace(Arc::new(listed.values().cloned().collect()));
        }
    }

    /// Reads the engine's load into the router's table (engines that do not say are left out).
    async fn read_loads(&self, channel: &Channel) {
        let mut client = VllmEngineClient::new(channel.clone());
        let Ok(Ok(answer)) = tokio::time::timeout(CALL_TIMEOUT, client.get_loads(GetLoadsRequest { dp_rank: None })).await else {
            return;
        };
        let loads = answer.into_inner().loads;
        let count = |n: i32| u64::try_from(n).unwrap_or(0);
        let report = LoadReport {
            worker: self.id.clone(),
            model: self.name.clone(),
            active: loads.iter().map(|l| count(l.num_running_reqs)).sum(),
            queued: loads.iter().map(|l| count(l.num_waiting_reqs)).sum(),
            kv_used: loads.iter().map(|l| count(l.num_used_tokens)).sum(),
            kv_capacity: loads.iter().map(|l| count(l.max_total_num_tokens)).sum(),
            max_batched_tokens: 0,
            prompt_tokens: 0,
            prompt_tokens_cached: 0,
            tokens_generated: 0,
        };
        (self.loads)(report);
    }
}

/// Whether the engine on `channel` says SERVING on `grpc.health.v1` (engines answer NOT_SERVING
/// while they warm up), or why not.
pub(super) async fn health(channel: &Channel) -> Result<(), String> {
    let mut health = HealthClient::new(channel.clone());
    let check = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() });
    match tokio::time::timeout(CALL_TIMEOUT, check).await {
        Ok(Ok(answer)) if answer.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
        Ok(Ok(answer)) => {
            let status = ServingStatus::try_from(answer.get_ref().status).map_or("an unknown status", |s| s.as_str_name());
            Err(format!("its health is {status}"))
        }
        Ok(Err(status)) => Err(format!("its health check failed: {}", status.message())),
        Err(_) => Err(format!("its health check was not answered within {} s", CALL_TIMEOUT.as_secs())),
    }
}
