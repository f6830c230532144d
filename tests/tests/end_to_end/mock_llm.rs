//! The mock language model loaded through a real model repository, as `tritium serve --engine
//! mock` declares it: its options reach the engine, and a bad one fails the load naming its key.

use futures::StreamExt;
use tritium_backend_api::BackendRegistry;
use tritium_backend_api::llm::{GenerateEvent, GenerateRequest, StopOptions};
use tritium_llm::{EngineOptions, MockOptions, mock_config_text};
use tritium_worker::{DeclaredModel, ModelRepository, RepositoryOptions};

fn declared(name: &str, options: &MockOptions) -> DeclaredModel {
    DeclaredModel { name: name.to_string(), config_text: mock_config_text(name, options) }
}

fn backends() -> BackendRegistry {
    let mut registry = BackendRegistry::default();
    tritium_llm::register(&mut registry, EngineOptions::default());
    registry
}

#[tokio::test]
async fn the_mock_backend_loads_through_a_repository() {
    let options = MockOptions { kv_blocks: 64, prefill_us_per_token: 0, decode_ms_per_step: 1, ..MockOptions::default() };
    let declared = declared("mock-\"q\"", &options);
    assert!(declared.config_text.contains("parameters { key: \"kv_blocks\" value { string_value: \"64\" } }"));
    let repository = ModelRepository::open(RepositoryOptions { declared: vec![declared], ..Default::default() }, backends())
        .expect("the repository opens");
    let version = repository.resolve("mock-\"q\"", None).expect("the mock model is served");
    assert!(version.decoupled());
    let model = version.language_model().expect("a language model");
    assert_eq!(model.stats().kv_tokens_capacity, 64 * 16);
    let request = GenerateRequest {
        prompt: vec![1, 2],
        stop: StopOptions { max_tokens: Some(3), ..Default::default() },
        ..Default::default()
    };
    let events: Vec<_> = model.generate(request).expect("generation starts").collect().await;
    let tokens = events.iter().filter(|event| matches!(event, Ok(GenerateEvent::Token(_)))).count();
    assert_eq!(tokens, 3);
    assert!(matches!(events.last(), Some(Ok(GenerateEvent::Finished { .. }))), "{events:?}");
    assert!(model.kv_events().is_some());
    let config = &repository.model("mock-\"q\"").expect("served").config;
    assert!(config.input.iter().any(|i| i.name == "text_input"));
}

#[test]
fn a_bad_mock_parameter_fails_the_load_naming_the_key() {
    let mut declared = declared("m", &MockOptions::default());
    declared.config_text = declared
        .config_text
        .replace("\"kv_blocks\" value { string_value: \"4096\"", "\"kv_blocks\" value { string_value: \"lots\"");
    let repository = ModelRepository::open(RepositoryOptions { declared: vec![declared], ..Default::default() }, backends())
        .expect("the repository opens; the model fails alone");
    assert!(repository.resolve("m", None).is_err());
    let index = repository.index(false).expect("an index");
    let entry = index.iter().find(|e| e.name == "m").expect("the failed model is indexed");
    assert!(entry.reason.contains("parameter 'kv_blocks' must be a whole number, not 'lots'"), "{}", entry.reason);
}
