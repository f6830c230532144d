use std::sync::atomic::AtomicUsize;

use async_trait::async_trait;
use futures::StreamExt;
use tritium_backend_api::llm::{FinishReason, GenerateError, GenerateEvent, GenerateRequest, GeneratedToken, TokenStream};
use tritium_worker::{
    DeclaredModel, InferOutcome, InferenceRequest, InferenceResponse, RepositoryOptions, ValidInferRequest,
    WorkerError,
};

use super::*;

/// A worker that says who it is in the response id, or is unreachable; its generations give
/// `tokens` tokens, then (if `dies`) break as a dead worker's stream does.
#[derive(Debug)]
struct Fake {
    name: &'static str,
    unreachable: bool,
    dies_after: Option<usize>,
    calls: AtomicUsize,
    prompts: Mutex<Vec<Vec<u32>>>,
}

impl Fake {
    fn new(name: &'static str) -> Arc<Fake> {
        Arc::new(Fake { name, unreachable: false, dies_after: None, calls: AtomicUsize::new(0), prompts: Mutex::default() })
    }

    fn unreachable(name: &'static str) -> Arc<Fake> {
        Arc::new(Fake { unreachable: true, ..Arc::into_inner(Fake::new(name)).expect("fresh") })
    }

    fn dying(name: &'static str, after: usize) -> Arc<Fake> {
        Arc::new(Fake { dies_after: Some(after), ..Arc::into_inner(Fake::new(name)).expect("fresh") })
    }

    fn gone(&self) -> WorkerError {
        WorkerError::Unreachable { worker: self.name.to_string(), message: "connection refused".into() }
    }
}

fn token(id: u32) -> Result<GenerateEvent, GenerateError> {
    Ok(GenerateEvent::Token(GeneratedToken { id, logprob: None, top_logprobs: Vec::new(), prompt_cached: None, prompt_pinned: None, stop: false }))
}

#[async_trait]
impl WorkerClient for Fake {
    async fn infer(&self, request: ValidInferRequest) -> Result<InferenceResponse, WorkerError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.unreachable {
            return Err(self.gone());
        }
        Ok(InferenceResponse {
            model_name: Arc::from(request.model_name()),
            model_version: 1,
            id: self.name.to_string(),
            outputs: Vec::new(),
            is_final: true,
            parameters: Vec::new(),
        })
    }

    async fn infer_stream(&self, request: ValidInferRequest) -> Result<InferOutcome, WorkerError> {
        self.infer(request).await.map(InferOutcome::Single)
    }

    async fn generate(&self, _model: &str, request: GenerateRequest) -> Result<TokenStream, WorkerError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.unreachable {
            return Err(self.gone());
        }
        self.prompts.lock().push(request.prompt.clone());
        let max = request.stop.max_tokens.unwrap_or(4) as usize;
        let mut events: Vec<_> = (0..max.min(self.dies_after.unwrap_or(usize::MAX))).map(|i| token(100 + i as u32)).collect();
        if self.dies_after.is_some_and(|after| after < max) {
            events.push(Err(GenerateError::WorkerLost {
                model: "m".into(),
                worker: self.name.to_string(),
                message: "it reset the connection".into(),
            }));
        } else {
            events.push(Ok(GenerateEvent::Finished {
                reason: FinishReason::Length,
                prompt_tokens: request.prompt.len() as u32,
                completion_tokens: max as u32,
                cached_tokens: 0,
                queued_for: std::time::Duration::ZERO,
            }));
        }
        Ok(TokenStream::from_events(events))
    }
}

/// The frontend's repository: models without inputs, so a request is valid with none.
fn repository() -> Arc<ModelRepository> {
    let declared = ["identity", "add_sub", "m", "x"]
        .iter()
        .map(|name| DeclaredModel { name: name.to_string(), config_text: format!("name: \"{name}\"\nbackend: \"identity\"\n") })
        .chain([DeclaredModel { name: "seq".into(), config_text: SEQUENCE_MODEL.into() }])
        .collect();
    ModelRepository::open(
        RepositoryOptions { declared, ..Default::default() },
        crate::test_backends(),
    )
    .expect("the declared models load")
}

/// A stateful model: its sequences must stay on one worker.
const SEQUENCE_MODEL: &str = r#"
backend: "accumulate"
max_batch_size: 0
input [ { name: "INPUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "OUTPUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
sequence_batching { state [ { input_name: "S_IN" output_name: "S_OUT" data_type: TYPE_INT32 dims: [ 1 ] } ] }
"#;

/// A request validated against the router's repository, as the frontend hands it over.
fn valid(router: &Router, request: InferenceRequest) -> ValidInferRequest {
    router.repository.validate(request).expect("a valid request")
}

fn router(mode: RouterMode, local: Arc<dyn WorkerClient>) -> Arc<Router> {
    let options = RouterOptions { mode, ..RouterOptions::default() };
    Router::new(options, repository(), "local", local, 64 << 20)
}

fn instance(id: &str, models: &[&str]) -> WorkerInstance {
    WorkerInstance {
        id: id.to_string(),
        address: WorkerAddress::InProcess,
        models: models.iter().map(|m| m.to_string()).collect(),
        mode: Default::default(),
        events: None,
        device: Default::default(),
    }
}

async fn who(router: &Router, model: &str) -> String {
    let request = match router.repository.validate(InferenceRequest::new(model, Vec::new())) {
        Ok(request) => request,
        Err(e) => return format!("invalid: {e}"),
    };
    match router.infer(request).await {
        Ok(response) => response.id,
        Err(e) => format!("error: {e}"),
    }
}

#[tokio::test]
async fn routes_by_model_round_robin_and_falls_back_to_the_local_worker() {
    let router = router(RouterMode::RoundRobin, Fake::new("local"));
    router.add_member_for_test("other", Fake::new("other"), true);
    router
        .apply(&[instance("local", &["identity", "add_sub"]), instance("other", &["add_sub"]), instance("ghost", &["x"])])
        .await;
    assert_eq!(who(&router, "identity").await, "local");
    let turns = [who(&router, "add_sub").await, who(&router, "add_sub").await];
    assert!(turns.contains(&"local".to_string()) && turns.contains(&"other".to_string()), "{turns:?}");
    assert!(who(&router, "unknown").await.contains("'unknown' is not found"), "an unknown model fails its validation");
    assert_eq!(who(&router, "x").await, "local", "a worker without a client is not routed to");
}

#[tokio::test]
async fn a_request_whose_worker_is_unreachable_runs_on_another_and_the_dead_one_is_passed_over() {
    let dead = Fake::unreachable("dead");
    let alive = Fake::new("alive");
    let router = router(RouterMode::RoundRobin, Fake::new("local"));
    router.add_member_for_test("dead", dead.clone(), false);
    router.add_member_for_test("alive", alive.clone(), false);
    router.apply(&[instance("dead", &["m"]), instance("alive", &["m"])]).await;
    for _ in 0..6 {
        assert_eq!(who(&router, "m").await, "alive");
    }
    assert_eq!(dead.calls.load(Ordering::Relaxed), 1, "a suspect worker is not tried again at once");
    assert_eq!(router.counters().retried.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn all_workers_unreachable_is_an_unavailable_error_not_a_hang() {
    let router = router(RouterMode::LeastLoaded, Fake::new("local"));
    router.add_member_for_test("a", Fake::unreachable("a"), false);
    router.add_member_for_test("b", Fake::unreachable("b"), false);
    router.apply(&[instance("a", &["m"]), instance("b", &["m"])]).await;
    let error = router.infer(valid(&router, InferenceRequest::new("m", Vec::new()))).await.expect_err("no worker");
    assert!(matches!(error, WorkerError::Unreachable { .. }), "{error:?}");
    assert_eq!(error.code(), tritium_proto::ErrorCode::Unavailable);
}

/// A router whose remote workers `a` and `b` both serve `m`.
async fn workers_a_and_b(mode: RouterMode) -> Arc<Router> {
    let router = router(mode, Fake::new("local"));
    router.add_member_for_test("a", Fake::new("a"), false);
    router.add_member_for_test("b", Fake::new("b"), false);
    router.apply(&[instance("a", &["m"]), instance("b", &["m"])]).await;
    router
}

/// A request for `m` that names its worker.
fn named(router: &Router, worker: &str) -> ValidInferRequest {
    let mut request = InferenceRequest::new("m", Vec::new());
    request.parameters.push((WORKER_ID_PARAMETER.to_string(), tritium_worker::ParamValue::String(worker.into())));
    valid(router, request)
}

#[tokio::test]
async fn direct_mode_takes_the_named_worker_and_refuses_without_a_name() {
    let router = workers_a_and_b(RouterMode::Direct).await;
    assert_eq!(router.infer(named(&router, "b")).await.expect("routed").id, "b");
    let error = router.infer(valid(&router, InferenceRequest::new("m", Vec::new()))).await.expect_err("no worker named");
    assert_eq!(error.code(), tritium_proto::ErrorCode::InvalidArg);
    assert!(error.to_string().contains(WORKER_ID_PARAMETER), "{error}");
    let error = router.infer(named(&router, "zzz")).await.expect_err("unknown worker");
    assert_eq!(error.code(), tritium_proto::ErrorCode::NotFound);
    assert!(!error.to_string().contains("'a'") && !error.to_string().contains(", b"), "the other workers are not named: {error}");
}

/// `worker` reports `kv_used` of its 100 KV blocks of model `m` in use.
fn report_kv_use(router: &Router, worker: &str, kv_used: u64) {
    let report = crate::events::LoadReport { worker: worker.into(), model: "m".into(), kv_used, kv_capacity: 100, ..Default::default() };
    router.loads.lock().insert((worker.into(), "m".into()), report);
}

#[tokio::test]
async fn a_named_worker_over_its_busy_threshold_is_refused_like_any_other() {
    let router = workers_a_and_b(RouterMode::RoundRobin).await;
    router.busy_thresholds().set("m", Some(0.5)).expect("a valid threshold");
    report_kv_use(&router, "a", 90);
    report_kv_use(&router, "b", 10);
    assert_eq!(router.infer(named(&router, "b")).await.expect("b is not busy").id, "b");
    let error = router.infer(named(&router, "a")).await.expect_err("a is busy");
    assert_eq!(error.code(), tritium_proto::ErrorCode::Unavailable, "{error}");
    assert!(error.to_string().contains("busy"), "{error}");
}

#[tokio::test]
async fn a_stream_whose_worker_dies_continues_on_another_from_the_tokens_already_generated() {
    let dying = Fake::dying("dying", 2);
    let healthy = Fake::new("healthy");
    let router = router(RouterMode::Direct, Fake::new("local"));
    router.add_member_for_test("dying", dying.clone(), false);
    router.add_member_for_test("healthy", healthy.clone(), false);
    router.apply(&[instance("dying", &["m"]), instance("healthy", &["m"])]).await;
    let request = GenerateRequest {
        prompt: vec![1, 2, 3],
        stop: tritium_backend_api::llm::StopOptions { max_tokens: Some(5), ..Default::default() },
        ..Default::default()
    };
    // Direct mode names the first worker; migration goes wherever it can.
    let stream = router.generate_on("m", Some("dying"), request).await.expect("started");
    let events: Vec<_> = stream.collect().await;
    let tokens: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Ok(GenerateEvent::Token(t)) => Some(t.id),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, vec![100, 101, 100, 101, 102], "2 tokens from the dying worker, the other 3 from the healthy one");
    match events.last() {
        Some(Ok(GenerateEvent::Finished { prompt_tokens, completion_tokens, .. })) => {
            assert_eq!((*prompt_tokens, *completion_tokens), (3, 5), "usage counts the original prompt and every token");
        }
        other => panic!("expected Finished, got {other:?}"),
    }
    assert_eq!(healthy.prompts.lock().clone(), vec![vec![1, 2, 3, 100, 101]], "the healthy worker got prompt + generated tokens");
    assert_eq!(router.counters().migrated.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_stream_that_cannot_migrate_ends_with_unavailable() {
    let router = Router::new(
        RouterOptions { mode: RouterMode::RoundRobin, migration_limit: 0, ..RouterOptions::default() },
        repository(),
        "local",
        Fake::new("local"),
        64 << 20,
    );
    router.add_member_for_test("dying", Fake::dying("dying", 1), false);
    router.apply(&[instance("dying", &["m"])]).await;
    let request = GenerateRequest { prompt: vec![1], ..Default::default() };
    let events: Vec<_> = router.generate("m", request).await.expect("started").collect().await;
    match events.last() {
        Some(Err(error)) => {
            assert_eq!(error.code(), tritium_proto::ErrorCode::Unavailable);
            assert!(error.to_string().contains("went away"), "{error}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_requests_of_one_sequence_stay_on_one_worker() {
    let router = router(RouterMode::RoundRobin, Fake::new("local"));
    router.add_member_for_test("a", Fake::new("a"), true);
    router.add_member_for_test("b", Fake::new("b"), true);
    router.apply(&[instance("local", &["seq"]), instance("a", &["seq"]), instance("b", &["seq"])]).await;
    let send = |sequence: i64| {
        let mut request = InferenceRequest::new("seq", vec![tritium_tensor::Tensor::from_slice("INPUT", vec![1], &[1i32])]);
        request.parameters.push(("sequence_id".into(), tritium_worker::ParamValue::Int64(sequence)));
        let request = valid(&router, request);
        let router = Arc::clone(&router);
        async move { router.infer(request).await.map(|r| r.id).unwrap_or_else(|e| format!("error: {e}")) }
    };
    let mut workers_used = std::collections::BTreeSet::new();
    for sequence in 1..=12 {
        let first = send(sequence).await;
        for _ in 0..3 {
            assert_eq!(send(sequence).await, first, "sequence {sequence} moved");
        }
        workers_used.insert(first);
    }
    assert!(workers_used.len() > 1, "sequences spread over the workers: {workers_used:?}");
}

#[tokio::test]
async fn an_on_demand_frontend_sends_a_model_a_worker_holds_there_instead_of_loading_it() {
    let text = "name: \"m\"\nbackend: \"identity\"\n";
    let declared = vec![DeclaredModel { name: "m".into(), config_text: text.into() }];
    let options = RepositoryOptions { declared, control_mode: tritium_worker::ControlMode::OnDemand, ..Default::default() };
    let backends = crate::test_backends();
    let repository = ModelRepository::open(options, backends).expect("opens");
    let router = Router::new(RouterOptions::default(), Arc::clone(&repository), "local", Fake::new("local"), 64 << 20);
    router.add_member_for_test("a", Fake::new("a"), false);
    router.apply(&[instance("a", &["m"])]).await;
    let config = tritium_repository::parse_config_text(text).expect("config");
    router.remote_models.described(
        &Arc::from("a"),
        vec![crate::remote::RemoteModel {
            name: "m".into(),
            version: 1,
            config,
            card: None,
            labels: Vec::new(),
            adapter_of: None,
                adapter_kv_seed: None,
            text_input: None,
        }],
    );
    repository.set_remote_models(router.remote_models.served_models());
    let wait = std::time::Duration::from_secs(60);
    assert!(repository.ensure_loaded("m", wait).await.expect("held by a").is_none());
    assert_eq!(who(&router, "m").await, "a");
    assert!(repository.local_models().is_empty(), "the frontend did not load it");
    // With no worker holding it, the frontend loads it itself and runs it here.
    router.apply(&[]).await;
    assert!(repository.ensure_loaded("m", wait).await.expect("loads").is_some());
    assert_eq!(repository.local_models().iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["m"]);
    assert_eq!(who(&router, "m").await, "local");
}

#[tokio::test]
async fn an_adapters_prompt_is_hashed_from_its_seed_and_found_under_the_model_it_adapts() {
    use tritium_backend_api::kv::{KvEvent, block_hashes_from};
    let router = router(RouterMode::Kv, Fake::new("local"));
    for id in ["a", "b"] {
        router.add_member_for_test(id, Fake::new(id), false);
    }
    router.apply(&[instance("a", &["base", "sql"]), instance("b", &["base", "sql"])]).await;
    for id in ["a", "b"] {
        let adapter = crate::remote::RemoteModel {
            name: "sql".into(),
            version: 1,
            config: Default::default(),
            card: None,
            labels: Vec::new(),
            adapter_of: Some(("base".into(), "adapters/sql".into())),
            adapter_kv_seed: Some(77),
            text_input: None,
        };
        router.remote_models.described(&Arc::from(id), vec![adapter]);
    }
    let size = router.options.kv_block_size;
    let prompt: Vec<u32> = (0..u32::try_from(size * 4).unwrap()).collect();
    // b's engine announced the adapter's blocks, under its base model, chained from its seed.
    router.apply_kv_event("b", "base", &KvEvent::Stored { parent: None, blocks: block_hashes_from(77, &prompt, size) });
    for _ in 0..4 {
        let picked = router.pick("sql", Some(&prompt), None, None, &[], false).unwrap().unwrap();
        assert_eq!(picked.member.id.as_ref(), "b", "the worker holding the adapter's prefix");
    }
}

/// Session affinity's modes differ when the bound worker is busy: `hard` keeps the session there
/// (refused like a named worker), `soft` lets the policy pick another and the session follows it.
#[tokio::test]
async fn a_busy_bound_worker_refuses_a_hard_session_and_passes_a_soft_one_on() {
    for mode in [super::sessions::AffinityMode::Hard, super::sessions::AffinityMode::Soft] {
        let router = round_robin_with_affinity(mode, 16).await;
        let request = || GenerateRequest { prompt: vec![1, 2, 3], ..Default::default() };
        let served = |stream: &TokenStream| stream.worker().map(str::to_owned).expect("served by a worker");
        let bound = served(&router.generate_in_session("m", "s", request()).await.expect("first turn"));
        let other = if bound == "a" { "b" } else { "a" };
        router.busy_thresholds().set("m", Some(0.5)).expect("a valid threshold");
        report_kv_use(&router, &bound, 90);
        report_kv_use(&router, other, 10);
        let busy = router.generate_in_session("m", "s", request()).await;
        match mode {
            super::sessions::AffinityMode::Hard => {
                let error = busy.expect_err("the bound worker is busy");
                assert!(error.to_string().contains("busy"), "{error}");
            }
            super::sessions::AffinityMode::Soft => {
                assert_eq!(served(&busy.expect("passed on")), other);
                // The session followed: with both idle again it stays on the other worker.
                router.loads.lock().clear();
                assert_eq!(served(&router.generate_in_session("m", "s", request()).await.expect("next turn")), other);
            }
        }
    }
}

/// With the session table full, a client's new session is refused, while a key the server derived
/// itself (a Responses API conversation's, which asked for no affinity) is routed without one.
#[tokio::test]
async fn a_full_session_table_refuses_a_named_session_but_routes_an_implied_one() {
    let router = round_robin_with_affinity(super::sessions::AffinityMode::Hard, 1).await;
    let request = || GenerateRequest { prompt: vec![1, 2, 3], ..Default::default() };
    router.generate_in_session("m", "held", request()).await.expect("the one session the table holds");
    let refused = router.generate_in_session("m", "named", request()).await.expect_err("the table is full");
    assert!(refused.to_string().contains("session affinity"), "{refused}");
    let implied = format!("{}response:root", tritium_backend_api::llm::IMPLIED_SESSION_MARK);
    router.generate_in_session("m", &implied, request()).await.expect("routed without affinity");
}

/// A round-robin router with session affinity (a 60 s TTL) over workers `a` and `b` of model `m`.
async fn round_robin_with_affinity(mode: super::sessions::AffinityMode, max_sessions: usize) -> Arc<Router> {
    let affinity = super::sessions::AffinityOptions { ttl: std::time::Duration::from_secs(60), mode, max_sessions };
    let options = RouterOptions { mode: RouterMode::RoundRobin, affinity: Some(affinity), ..RouterOptions::default() };
    let router = Router::new(options, repository(), "local", Fake::new("local"), 64 << 20);
    router.add_member_for_test("a", Fake::new("a"), false);
    router.add_member_for_test("b", Fake::new("b"), false);
    router.apply(&[instance("a", &["m"]), instance("b", &["m"])]).await;
    router
}
