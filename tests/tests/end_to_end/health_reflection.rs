//! `grpc.health.v1.Health` (the server, the inference service and each served model are service
//! names) and gRPC server reflection v1, so grpcurl works without the .proto files.

use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
use tritium_tests::{TestServer, add_sub_config, identity_config, load_model, temp_repository, unload_model, write_model};
use tritium_worker::{ControlMode, RepositoryOptions};

async fn channel(server: &TestServer) -> Channel {
    Channel::from_shared(server.uri()).expect("uri").connect().await.expect("connects")
}

async fn check(health: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let response = health.check(HealthCheckRequest { service: service.into() }).await.expect("Check").into_inner();
    ServingStatus::try_from(response.status).expect("a known status")
}

async fn next_status(watch: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    let response = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a status within 10 s")
        .expect("the watch is open")
        .expect("not an error");
    ServingStatus::try_from(response.status).expect("a known status")
}

#[tokio::test]
async fn the_server_the_service_and_each_model_are_serving() {
    let server = TestServer::builtin().await;
    let mut health = HealthClient::new(channel(&server).await);
    for service in ["", "inference.GRPCInferenceService", "identity", "identity_batch", "add_sub", "repeat"] {
        assert_eq!(check(&mut health, service).await, ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn an_unloaded_model_stops_serving_and_watchers_see_it() {
    let repository = temp_repository();
    write_model(repository.path(), "identity", &identity_config("identity", "TYPE_FP32", 0), &[1]);
    write_model(repository.path(), "add_sub", &add_sub_config("add_sub", "TYPE_INT32", &[16], 0), &[1]);
    let options = RepositoryOptions {
        control_mode: ControlMode::Explicit,
        startup_models: vec!["identity".into(), "add_sub".into()],
        ..RepositoryOptions::default()
    };
    let server = TestServer::with_repository(repository, options).await;
    let mut client = server.client().await;
    let mut health = HealthClient::new(channel(&server).await);

    let mut watch = health.watch(HealthCheckRequest { service: "add_sub".into() }).await.expect("Watch").into_inner();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving, "the watch starts with the current status");

    unload_model(&mut client, "add_sub").await.expect("unload");
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing, "the watch sees the unload");
    assert_eq!(check(&mut health, "add_sub").await, ServingStatus::NotServing);
    assert_eq!(check(&mut health, "identity").await, ServingStatus::Serving, "other models are unaffected");
    assert_eq!(check(&mut health, "").await, ServingStatus::Serving, "an unloaded model does not make the server unready");

    load_model(&mut client, "add_sub", None).await.expect("load");
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving, "and sees it come back");
    assert_eq!(check(&mut health, "add_sub").await, ServingStatus::Serving);
}

/// Sends reflection requests on one call and collects one response each.
async fn reflect(server: &TestServer, requests: Vec<MessageRequest>) -> Vec<ServerReflectionResponse> {
    let mut client = ServerReflectionClient::new(channel(server).await);
    let count = requests.len();
    let outbound = futures::stream::iter(
        requests.into_iter().map(|r| ServerReflectionRequest { host: String::new(), message_request: Some(r) }),
    );
    let mut inbound = client.server_reflection_info(outbound).await.expect("ServerReflectionInfo").into_inner();
    let mut responses = Vec::new();
    while responses.len() < count {
        responses.push(inbound.next().await.expect("a response").expect("not an error"));
    }
    responses
}

#[tokio::test]
async fn reflection_lists_the_services() {
    let server = TestServer::builtin().await;
    let responses = reflect(&server, vec![MessageRequest::ListServices(String::new())]).await;
    let Some(MessageResponse::ListServicesResponse(list)) = &responses[0].message_response else {
        panic!("expected a service list, got {:?}", responses[0].message_response);
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["inference.GRPCInferenceService", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
}

#[tokio::test]
async fn reflection_describes_the_inference_service() {
    let server = TestServer::builtin().await;
    let responses = reflect(
        &server,
        vec![
            MessageRequest::FileContainingSymbol("inference.GRPCInferenceService".into()),
            MessageRequest::FileContainingSymbol("inference.ModelInferRequest".into()),
        ],
    )
    .await;
    let files = |response: &ServerReflectionResponse| -> Vec<prost_types::FileDescriptorProto> {
        let Some(MessageResponse::FileDescriptorResponse(found)) = &response.message_response else {
            panic!("expected descriptors, got {:?}", response.message_response);
        };
        assert!(!found.file_descriptor_proto.is_empty(), "at least one descriptor");
        found
            .file_descriptor_proto
            .iter()
            .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("a FileDescriptorProto"))
            .collect()
    };
    let service_files = files(&responses[0]);
    let service = service_files
        .iter()
        .filter(|f| f.package() == "inference")
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "GRPCInferenceService")
        .expect("the file defines GRPCInferenceService");
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    for rpc in ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelStreamInfer"] {
        assert!(methods.contains(&rpc), "{rpc} in {methods:?}");
    }
    let stream = service.method.iter().find(|m| m.name() == "ModelStreamInfer").expect("ModelStreamInfer");
    assert!(stream.client_streaming() && stream.server_streaming());

    let message_files = files(&responses[1]);
    assert!(
        message_files.iter().flat_map(|f| &f.message_type).any(|m| m.name() == "ModelInferRequest"),
        "the file defines ModelInferRequest"
    );
}
