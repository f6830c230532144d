//! The model repository under Triton's three control modes: the index, explicit load (with a
//! `config` override) and unload, version policies, poll mode following the folder, and models
//! that fail to load being reported while the others serve.

use std::path::Path;
use std::time::Duration;

use tonic::Code;
use tritium_grpc_clients::{InferClient, InferRequestBuilder, output_tensor};
use tritium_proto::inference::{ModelMetadataRequest, ServerReadyRequest};
use tritium_server::ServerConfig;
use tritium_tensor::Tensor;
use tritium_tests::{
    TestServer, add_sub_config, assert_status, eventually, identity_config, identity_request, index_row, load_model,
    repository_index, temp_repository, unload_model, write_model,
};
use tritium_worker::{ControlMode, RepositoryOptions};

const NO_CONTROL: &str = "explicit model load / unload is not allowed if polling is enabled";

/// identity, identity_batch (max_batch_size 8) and add_sub (INT32 [16]).
fn three_models(root: &Path) {
    write_model(root, "identity", &identity_config("identity", "TYPE_FP32", 0), &[1]);
    write_model(root, "identity_batch", &identity_config("identity_batch", "TYPE_FP32", 8), &[1]);
    write_model(root, "add_sub", &add_sub_config("add_sub", "TYPE_INT32", &[16], 0), &[1]);
}

async fn explicit(startup_models: &[&str]) -> TestServer {
    let repository = temp_repository();
    three_models(repository.path());
    let options = RepositoryOptions {
        control_mode: ControlMode::Explicit,
        startup_models: startup_models.iter().map(|m| m.to_string()).collect(),
        ..RepositoryOptions::default()
    };
    TestServer::with_repository(repository, options).await
}

async fn add_sub_works(client: &mut InferClient) {
    let request = InferRequestBuilder::new("add_sub")
        .input(Tensor::from_slice("INPUT0", vec![16], &[5i32; 16]))
        .input(Tensor::from_slice("INPUT1", vec![16], &[3i32; 16]))
        .build();
    let response = client.infer(request).await.expect("add_sub infers");
    assert_eq!(output_tensor(&response, "OUTPUT0").expect("OUTPUT0").to_vec::<i32>().expect("INT32"), [8; 16]);
}

async fn server_ready(client: &mut InferClient) -> bool {
    client.raw().server_ready(ServerReadyRequest {}).await.expect("ServerReady").into_inner().ready
}

#[tokio::test]
async fn explicit_mode_indexes_every_model_and_loads_only_those_asked_for() {
    let server = explicit(&["identity"]).await;
    let mut client = server.client().await;
    assert_eq!(
        repository_index(&mut client, false).await,
        [index_row("add_sub", "", "", ""), index_row("identity", "1", "READY", ""), index_row("identity_batch", "", "", "")]
    );
    assert_eq!(repository_index(&mut client, true).await, [index_row("identity", "1", "READY", "")]);
    assert!(server_ready(&mut client).await, "models never asked for do not make the server unready");
    assert!(client.model_ready("identity", "").await.expect("ModelReady"));
    assert!(!client.model_ready("add_sub", "").await.expect("ModelReady"));
}

#[tokio::test]
async fn load_serves_and_unload_stops_serving() {
    let server = explicit(&["identity"]).await;
    let mut client = server.client().await;
    load_model(&mut client, "add_sub", None).await.expect("load add_sub");
    assert!(repository_index(&mut client, false).await.contains(&index_row("add_sub", "1", "READY", "")));
    assert!(client.model_ready("add_sub", "").await.expect("ModelReady"));
    add_sub_works(&mut client).await;

    unload_model(&mut client, "add_sub").await.expect("unload add_sub");
    assert_eq!(
        repository_index(&mut client, false).await,
        [
            index_row("add_sub", "1", "UNAVAILABLE", "unloaded"),
            index_row("identity", "1", "READY", ""),
            index_row("identity_batch", "", "", "")
        ]
    );
    assert!(!client.model_ready("add_sub", "").await.expect("ModelReady"));
    let gone = "Request for unknown model: 'add_sub' has no available versions";
    let request = InferRequestBuilder::new("add_sub")
        .input(Tensor::from_slice("INPUT0", vec![16], &[0i32; 16]))
        .input(Tensor::from_slice("INPUT1", vec![16], &[0i32; 16]))
        .build();
    assert_status(client.raw().model_infer(request).await, Code::NotFound, gone);
    let metadata = ModelMetadataRequest { name: "add_sub".into(), version: String::new() };
    assert_status(client.raw().model_metadata(metadata).await, Code::NotFound, gone);
    assert!(server_ready(&mut client).await, "an unloaded model does not make the server unready");

    // And back again.
    load_model(&mut client, "add_sub", None).await.expect("reload add_sub");
    add_sub_works(&mut client).await;
}

#[tokio::test]
async fn load_with_a_config_override_uses_it() {
    let server = explicit(&[]).await;
    let mut client = server.client().await;
    let config = r#"{
        "name": "identity_batch", "backend": "identity", "max_batch_size": 4,
        "input": [ { "name": "INPUT0", "data_type": "TYPE_FP32", "dims": [ -1 ] } ],
        "output": [ { "name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [ -1 ] } ]
    }"#;
    load_model(&mut client, "identity_batch", Some(config)).await.expect("load with override");
    assert_eq!(client.model_config("identity_batch", "").await.expect("ModelConfig").max_batch_size, 4);
    let five = client.raw().model_infer(identity_request("identity_batch", vec![5, 1], &[0.0; 5])).await;
    assert_status(
        five,
        Code::InvalidArgument,
        "[request id: <id_unknown>] inference request batch-size must be <= 4 for 'identity_batch'",
    );
    client.infer(identity_request("identity_batch", vec![4, 1], &[0.0; 4])).await.expect("a batch of 4");

    // Without the override, a reload reads config.pbtxt again.
    load_model(&mut client, "identity_batch", None).await.expect("reload from config.pbtxt");
    assert_eq!(client.model_config("identity_batch", "").await.expect("ModelConfig").max_batch_size, 8);
    client.infer(identity_request("identity_batch", vec![5, 1], &[0.0; 5])).await.expect("a batch of 5");

    let not_json = load_model(&mut client, "identity_batch", Some("{ not json")).await.expect_err("bad JSON");
    assert!(not_json.message().contains("identity_batch"), "{}", not_json.message());
}

#[tokio::test]
async fn unknown_models_unload_fine_and_fail_to_load() {
    let server = explicit(&["identity"]).await;
    let mut client = server.client().await;
    unload_model(&mut client, "nope").await.expect("unloading an unknown model is OK");
    let status = load_model(&mut client, "nope", None).await.expect_err("loading an unknown model fails");
    assert_eq!(status.code(), Code::Internal, "{}", status.message());
    assert!(status.message().contains("'nope'"), "{}", status.message());
    assert!(client.model_ready("identity", "").await.expect("ModelReady"), "nothing else changed");
}

#[tokio::test]
async fn load_and_unload_are_refused_outside_explicit_mode() {
    for mode in [ControlMode::None, ControlMode::Poll] {
        let repository = temp_repository();
        three_models(repository.path());
        let options = RepositoryOptions { control_mode: mode, ..RepositoryOptions::default() };
        let server = TestServer::with_repository(repository, options).await;
        let mut client = server.client().await;
        assert_status(load_model(&mut client, "add_sub", None).await, Code::Unavailable, NO_CONTROL);
        assert_status(unload_model(&mut client, "add_sub").await, Code::Unavailable, NO_CONTROL);
        add_sub_works(&mut client).await;
    }
    // The built-in repository too.
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    assert_status(unload_model(&mut client, "identity").await, Code::Unavailable, NO_CONTROL);
}

#[tokio::test]
async fn a_star_loads_every_model_at_start() {
    let server = explicit(&["*"]).await;
    let mut client = server.client().await;
    assert_eq!(
        repository_index(&mut client, false).await,
        [
            index_row("add_sub", "1", "READY", ""),
            index_row("identity", "1", "READY", ""),
            index_row("identity_batch", "1", "READY", "")
        ]
    );
}

#[tokio::test]
async fn a_startup_model_missing_from_the_repository_stops_the_start() {
    let repository = temp_repository();
    three_models(repository.path());
    let options = RepositoryOptions {
        paths: vec![repository.path().to_path_buf()],
        control_mode: ControlMode::Explicit,
        startup_models: vec!["identity".into(), "nope".into()],
        ..RepositoryOptions::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let error = tritium_server::spawn(ServerConfig { repository: options, ..ServerConfig::default() }, listener)
        .await
        .expect_err("the start fails");
    assert!(error.to_string().contains("'nope'"), "{error}");
}

fn versioned(name: &str, policy: &str) -> String {
    format!("{}version_policy: {{ {policy} }}\n", identity_config(name, "TYPE_FP32", 0))
}

#[tokio::test]
async fn version_policies_choose_the_served_versions() {
    let repository = temp_repository();
    let root = repository.path();
    write_model(root, "default", &identity_config("default", "TYPE_FP32", 0), &[1, 2, 3]);
    write_model(root, "all", &versioned("all", "all {}"), &[1, 2, 3]);
    write_model(root, "specific", &versioned("specific", "specific { versions: [1, 3] }"), &[1, 2, 3]);
    write_model(root, "latest_two", &versioned("latest_two", "latest { num_versions: 2 }"), &[1, 2, 3]);
    let server = TestServer::with_repository(repository, RepositoryOptions::default()).await;
    let mut client = server.client().await;

    for (model, served) in
        [("default", &["3"][..]), ("all", &["1", "2", "3"]), ("specific", &["1", "3"]), ("latest_two", &["2", "3"])]
    {
        let metadata = client.model_metadata(model, "").await.expect("metadata");
        assert_eq!(metadata.versions, served, "{model}");
        for version in ["1", "2", "3"] {
            let ready = client.model_ready(model, version).await.expect("ModelReady");
            assert_eq!(ready, served.contains(&version), "{model} version {version}");
        }
        // No version asked: the latest served one answers.
        let response = client.infer(identity_request(model, vec![1], &[1.0])).await.expect("infer");
        assert_eq!(response.model_version, "3", "{model}");
        let stats = client.statistics(model, "").await.expect("statistics");
        let versions: Vec<&str> = stats.iter().map(|s| s.version.as_str()).collect();
        assert_eq!(versions, served, "{model}: statistics per served version");
    }
    let two = client
        .infer(InferRequestBuilder::new("all").version("2").input(Tensor::from_slice("INPUT0", vec![1], &[2f32])).build())
        .await;
    assert_eq!(two.expect("version 2 of all").model_version, "2");
    let missing = client
        .raw()
        .model_infer(
            InferRequestBuilder::new("specific").version("2").input(Tensor::from_slice("INPUT0", vec![1], &[2f32])).build(),
        )
        .await;
    assert_status(missing, Code::NotFound, "Request for unknown model: 'specific' version 2 is not found");
    let index = repository_index(&mut client, true).await;
    let rows: Vec<(&str, &str)> = index.iter().map(|(n, v, _, _)| (n.as_str(), v.as_str())).collect();
    assert_eq!(
        rows,
        [
            ("all", "1"),
            ("all", "2"),
            ("all", "3"),
            ("default", "3"),
            ("latest_two", "2"),
            ("latest_two", "3"),
            ("specific", "1"),
            ("specific", "3")
        ]
    );
}

async fn poll_server(root_models: impl FnOnce(&Path)) -> TestServer {
    let repository = temp_repository();
    root_models(repository.path());
    let options = RepositoryOptions {
        control_mode: ControlMode::Poll,
        poll_interval: Duration::from_millis(100),
        ..RepositoryOptions::default()
    };
    TestServer::with_repository(repository, options).await
}

const POLL_WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn poll_mode_follows_models_added_and_removed() {
    let server = poll_server(|root| {
        write_model(root, "identity", &identity_config("identity", "TYPE_FP32", 0), &[1]);
    })
    .await;
    let root = server.repository_path().expect("repository").to_path_buf();
    let mut client = server.client().await;
    assert!(!client.model_ready("late", "").await.expect("ModelReady"));

    // Built aside and moved in at once, so no poll sees half a model.
    let staging = temp_repository();
    write_model(staging.path(), "late", &identity_config("late", "TYPE_FP32", 0), &[1]);
    std::fs::rename(staging.path().join("late"), root.join("late")).expect("move the model in");
    let mut probe = client.clone();
    eventually("'late' to load", POLL_WAIT, || {
        let mut c = probe.clone();
        async move { c.model_ready("late", "").await.expect("ModelReady").then_some(()) }
    })
    .await;
    let response = client.infer(identity_request("late", vec![2], &[1.0, 2.0])).await.expect("'late' serves");
    assert_eq!(output_tensor(&response, "OUTPUT0").expect("OUTPUT0").to_vec::<f32>().expect("FP32"), [1.0, 2.0]);
    assert!(repository_index(&mut client, true).await.contains(&index_row("late", "1", "READY", "")));

    std::fs::remove_dir_all(root.join("late")).expect("remove the model");
    eventually("'late' to go", POLL_WAIT, || {
        let mut c = probe.clone();
        async move { (!c.model_ready("late", "").await.expect("ModelReady")).then_some(()) }
    })
    .await;
    let status = probe.raw().model_infer(identity_request("late", vec![1], &[1.0])).await.expect_err("'late' is gone");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().starts_with("Request for unknown model: 'late'"), "{}", status.message());
    assert!(client.model_ready("identity", "").await.expect("ModelReady"), "the other model still serves");
}

#[tokio::test]
async fn poll_mode_reloads_an_edited_config() {
    let server = poll_server(|root| {
        write_model(root, "editable", &identity_config("editable", "TYPE_FP32", 8), &[1]);
    })
    .await;
    let dir = server.repository_path().expect("repository").join("editable");
    let client = server.client().await;
    assert_eq!(client.clone().model_config("editable", "").await.expect("ModelConfig").max_batch_size, 8);

    let edited = dir.join("config.pbtxt.new");
    std::fs::write(&edited, identity_config("editable", "TYPE_FP32", 4)).expect("write");
    std::fs::rename(&edited, dir.join("config.pbtxt")).expect("replace config.pbtxt");
    eventually("the new max_batch_size", POLL_WAIT, || {
        let mut c = client.clone();
        async move { (c.model_config("editable", "").await.ok()?.max_batch_size == 4).then_some(()) }
    })
    .await;
    let five = client.clone().raw().model_infer(identity_request("editable", vec![5, 1], &[0.0; 5])).await;
    assert_eq!(five.expect_err("over the new limit").code(), Code::InvalidArgument);
}

#[tokio::test]
async fn models_that_fail_to_load_are_reported_while_the_others_serve() {
    let repository = temp_repository();
    let root = repository.path();
    write_model(root, "identity", &identity_config("identity", "TYPE_FP32", 0), &[1]);
    write_model(root, "bad_syntax", "name: \"bad_syntax\"\nmax_batch_size: [[[\n", &[1]);
    write_model(root, "bad_batch", &identity_config("bad_batch", "TYPE_FP32", -1), &[1]);
    write_model(root, "bad_backend", &identity_config("bad_backend", "TYPE_FP32", 0).replace("\"identity\"", "\"nope\""), &[1]);
    write_model(root, "bad_name", &identity_config("other_name", "TYPE_FP32", 0), &[1]);
    let server = TestServer::with_repository(repository, RepositoryOptions::default()).await;
    let mut client = server.client().await;

    let index = repository_index(&mut client, false).await;
    let expected: [(&str, &[&str]); 4] = [
        ("bad_backend", &["unknown backend 'nope'"]),
        ("bad_batch", &["bad_batch", "max_batch_size"]),
        ("bad_name", &["other_name", "bad_name"]),
        ("bad_syntax", &["bad_syntax"]),
    ];
    for (model, says) in expected {
        let row = index.iter().find(|(name, ..)| name == model).unwrap_or_else(|| panic!("{model} is in the index: {index:?}"));
        assert_eq!((row.1.as_str(), row.2.as_str()), ("1", "UNAVAILABLE"), "{model}");
        for needle in says {
            assert!(row.3.contains(needle), "{model}: reason {:?} lacks {needle:?}", row.3);
        }
        assert!(!client.model_ready(model, "").await.expect("ModelReady"), "{model}");
    }
    assert!(index.contains(&index_row("identity", "1", "READY", "")));
    assert_eq!(index.len(), 5);
    let response = client.infer(identity_request("identity", vec![1], &[3.0])).await.expect("identity still serves");
    assert_eq!(response.model_name, "identity");
    assert!(!server_ready(&mut client).await, "a model that failed to load makes the server unready, as in Triton");
}

#[tokio::test]
async fn a_model_without_versions_is_reported_too() {
    let repository = temp_repository();
    write_model(repository.path(), "identity", &identity_config("identity", "TYPE_FP32", 0), &[1]);
    write_model(repository.path(), "empty", &identity_config("empty", "TYPE_FP32", 0), &[]);
    let server = TestServer::with_repository(repository, RepositoryOptions::default()).await;
    let mut client = server.client().await;
    let index = repository_index(&mut client, false).await;
    let row = index.iter().find(|(name, ..)| name == "empty");
    let row = row.unwrap_or_else(|| panic!("a model that failed to load is in the index: {index:?}"));
    assert_eq!(row.2, "UNAVAILABLE");
    assert!(row.3.contains("at least one version"), "{:?}", row.3);
}

#[tokio::test]
async fn a_failed_explicit_reload_keeps_the_loaded_model() {
    let server = explicit(&["identity_batch"]).await;
    let mut client = server.client().await;
    // Triton's model_management.md: "if the reload fails for any reason the already loaded model will be
    // unchanged and will remain loaded".
    let broken = r#"{ "name": "identity_batch", "backend": "identity", "max_batch_size": -1,
        "input": [ { "name": "INPUT0", "data_type": "TYPE_FP32", "dims": [ -1 ] } ],
        "output": [ { "name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [ -1 ] } ] }"#;
    let status = load_model(&mut client, "identity_batch", Some(broken)).await.expect_err("the reload fails");
    assert!(status.message().contains("max_batch_size"), "{}", status.message());
    assert!(client.model_ready("identity_batch", "").await.expect("ModelReady"), "the loaded model is still ready");
    client.infer(identity_request("identity_batch", vec![8, 1], &[0.0; 8])).await.expect("and still serves its old config");
    assert_eq!(client.model_config("identity_batch", "").await.expect("ModelConfig").max_batch_size, 8);
}

#[tokio::test]
async fn a_failed_poll_reload_keeps_the_loaded_model() {
    let server = poll_server(|root| {
        write_model(root, "editable", &identity_config("editable", "TYPE_FP32", 8), &[1]);
    })
    .await;
    let root = server.repository_path().expect("repository").to_path_buf();
    let mut client = server.client().await;
    // Break the config first, then add a marker model: once the marker serves, a poll has seen both.
    std::fs::write(root.join("editable").join("config.pbtxt"), "name: \"editable\"\nmax_batch_size: [[[\n").expect("break it");
    let staging = temp_repository();
    write_model(staging.path(), "marker", &identity_config("marker", "TYPE_FP32", 0), &[1]);
    std::fs::rename(staging.path().join("marker"), root.join("marker")).expect("move the marker in");
    let probe = client.clone();
    eventually("the marker to load", POLL_WAIT, || {
        let mut c = probe.clone();
        async move { c.model_ready("marker", "").await.expect("ModelReady").then_some(()) }
    })
    .await;
    assert!(client.model_ready("editable", "").await.expect("ModelReady"), "the loaded model is still ready");
    client.infer(identity_request("editable", vec![8, 1], &[0.0; 8])).await.expect("and still serves its old config");
}

#[tokio::test]
async fn poll_mode_follows_version_folders() {
    let server = poll_server(|root| {
        write_model(root, "growing", &identity_config("growing", "TYPE_FP32", 0), &[1]);
    })
    .await;
    let dir = server.repository_path().expect("repository").join("growing");
    let mut client = server.client().await;
    std::fs::create_dir(dir.join("2")).expect("add version 2");
    let probe = client.clone();
    eventually("version 2 to be served", POLL_WAIT, || {
        let mut c = probe.clone();
        async move { c.model_ready("growing", "2").await.expect("ModelReady").then_some(()) }
    })
    .await;
    assert!(!client.model_ready("growing", "1").await.expect("ModelReady"), "latest 1: only the newest is served");
    let response = client.infer(identity_request("growing", vec![1], &[1.0])).await.expect("infer");
    assert_eq!(response.model_version, "2");

    std::fs::remove_dir(dir.join("2")).expect("remove version 2");
    eventually("version 1 to be served again", POLL_WAIT, || {
        let mut c = probe.clone();
        async move { c.model_ready("growing", "1").await.expect("ModelReady").then_some(()) }
    })
    .await;
    assert!(!client.model_ready("growing", "2").await.expect("ModelReady"));
}

#[tokio::test]
async fn a_model_never_loaded_is_unknown_and_after_unload_has_no_versions() {
    let server = explicit(&["identity"]).await;
    let mut client = server.client().await;
    let metadata = |name: &str| ModelMetadataRequest { name: name.into(), version: String::new() };
    assert_status(
        client.raw().model_metadata(metadata("add_sub")).await,
        Code::NotFound,
        "Request for unknown model: 'add_sub' is not found",
    );
    load_model(&mut client, "add_sub", None).await.expect("load");
    unload_model(&mut client, "add_sub").await.expect("unload");
    assert_status(
        client.raw().model_metadata(metadata("add_sub")).await,
        Code::NotFound,
        "Request for unknown model: 'add_sub' has no available versions",
    );
}
