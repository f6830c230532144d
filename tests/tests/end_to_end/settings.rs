//! LogSettings and TraceSetting: an empty request reads, keys update, and a bad key or value is
//! INVALID_ARGUMENT and changes nothing.

use std::collections::HashMap;

use tonic::Code;
use tritium_grpc_clients::InferClient;
use tritium_proto::inference::log_settings_request::SettingValue as LogIn;
use tritium_proto::inference::log_settings_request::setting_value::ParameterChoice as In;
use tritium_proto::inference::log_settings_response::setting_value::ParameterChoice as Out;
use tritium_proto::inference::trace_setting_request::SettingValue as TraceIn;
use tritium_proto::inference::{LogSettingsRequest, TraceSettingRequest};
use tritium_tests::{TestServer, assert_status};

async fn log_settings(client: &mut InferClient, settings: &[(&str, In)]) -> Result<HashMap<String, Out>, tonic::Status> {
    let settings = settings.iter().map(|(k, v)| (k.to_string(), LogIn { parameter_choice: Some(v.clone()) })).collect();
    let response = client.raw().log_settings(LogSettingsRequest { settings }).await?.into_inner();
    Ok(response.settings.into_iter().map(|(k, v)| (k, v.parameter_choice.expect("a value"))).collect())
}

async fn trace_settings(
    client: &mut InferClient,
    model: &str,
    settings: &[(&str, &[&str])],
) -> Result<HashMap<String, Vec<String>>, tonic::Status> {
    let settings =
        settings.iter().map(|(k, v)| (k.to_string(), TraceIn { value: v.iter().map(|s| s.to_string()).collect() })).collect();
    let request = TraceSettingRequest { settings, model_name: model.into() };
    let response = client.raw().trace_setting(request).await?.into_inner();
    Ok(response.settings.into_iter().map(|(k, v)| (k, v.value)).collect())
}

fn default_log() -> HashMap<String, Out> {
    HashMap::from([
        ("log_file".to_string(), Out::StringParam(String::new())),
        ("log_info".to_string(), Out::BoolParam(true)),
        ("log_warning".to_string(), Out::BoolParam(true)),
        ("log_error".to_string(), Out::BoolParam(true)),
        ("log_verbose_level".to_string(), Out::Uint32Param(0)),
        ("log_format".to_string(), Out::StringParam("default".into())),
    ])
}

fn default_trace() -> HashMap<String, Vec<String>> {
    [
        ("trace_file", ""),
        ("trace_level", "OFF"),
        ("trace_rate", "1000"),
        ("trace_count", "-1"),
        ("log_frequency", "0"),
        ("trace_mode", "triton"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
    .collect()
}

#[tokio::test]
async fn log_settings_read_and_update() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    assert_eq!(log_settings(&mut client, &[]).await.expect("get"), default_log());

    let updated = log_settings(&mut client, &[("log_verbose_level", In::Uint32Param(1))]).await.expect("update");
    let mut expected = default_log();
    expected.insert("log_verbose_level".into(), Out::Uint32Param(1));
    assert_eq!(updated, expected, "the update answers with the settings now in force");
    assert_eq!(log_settings(&mut client, &[]).await.expect("get"), expected);

    let several = [
        ("log_info", In::BoolParam(false)),
        ("log_warning", In::BoolParam(false)),
        ("log_format", In::StringParam("ISO8601".into())),
        ("log_file", In::StringParam(String::new())),
    ];
    let updated = log_settings(&mut client, &several).await.expect("update several");
    expected.insert("log_info".into(), Out::BoolParam(false));
    expected.insert("log_warning".into(), Out::BoolParam(false));
    expected.insert("log_format".into(), Out::StringParam("ISO8601".into()));
    assert_eq!(updated, expected);
}

#[tokio::test]
async fn bad_log_settings_are_invalid_and_change_nothing() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let cases: [(&[(&str, In)], &str); 5] = [
        (&[("log_info", In::StringParam("true".into()))], "log setting 'log_info' expects a bool_param"),
        (&[("log_verbose_level", In::BoolParam(true))], "log setting 'log_verbose_level' expects a uint32_param"),
        (&[("log_format", In::Uint32Param(1))], "log setting 'log_format' expects a string_param"),
        (&[("log_format", In::StringParam("xml".into()))], "invalid log_format 'xml', expected 'default' or 'ISO8601'"),
        (&[("log_nope", In::BoolParam(true))], "unknown log setting 'log_nope'"),
    ];
    for (settings, message) in cases {
        assert_status(log_settings(&mut client, settings).await, Code::InvalidArgument, message);
    }
    // A request with one bad key applies none of its keys.
    let mixed = [("log_verbose_level", In::Uint32Param(3)), ("log_nope", In::BoolParam(true))];
    assert_eq!(log_settings(&mut client, &mixed).await.expect_err("bad key").code(), Code::InvalidArgument);
    assert_eq!(log_settings(&mut client, &[]).await.expect("get"), default_log());
}

#[tokio::test]
async fn trace_settings_read_and_update() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    assert_eq!(trace_settings(&mut client, "", &[]).await.expect("get"), default_trace());

    let updated = trace_settings(&mut client, "", &[("trace_rate", &["10"])]).await.expect("update");
    let mut expected = default_trace();
    expected.insert("trace_rate".into(), vec!["10".into()]);
    assert_eq!(updated, expected);
    assert_eq!(trace_settings(&mut client, "", &[]).await.expect("get"), expected);

    // Without a trace file (no --trace-config triton,file=...) no level can be turned on, as in Triton.
    assert_status(
        trace_settings(&mut client, "", &[("trace_level", &["TIMESTAMPS", "TENSORS"])]).await,
        Code::InvalidArgument,
        "Attempting to set invalid trace setting :trace file name is not given",
    );
    // An empty value list restores the default.
    let restored = trace_settings(&mut client, "", &[("trace_rate", &[]), ("trace_level", &[])]).await.expect("clear");
    assert_eq!(restored, default_trace());
    // A served model may be named.
    assert_eq!(trace_settings(&mut client, "identity", &[]).await.expect("model settings"), default_trace());
}

#[tokio::test]
async fn bad_trace_settings_are_rejected() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    // Triton 2.51 passes over levels and keys it does not know (tests/python/observability/test_trace_file.py
    // replays its recorded answers); values it cannot take are refused.
    assert_eq!(trace_settings(&mut client, "", &[("trace_level", &["LOUD"])]).await.expect("ignored"), default_trace());
    assert_eq!(trace_settings(&mut client, "", &[("trace_nope", &["1"])]).await.expect("ignored"), default_trace());
    assert_status(
        trace_settings(&mut client, "", &[("trace_rate", &["often"])]).await,
        Code::InvalidArgument,
        "Unable to parse 'trace_rate', got: often",
    );
    assert_status(
        trace_settings(&mut client, "", &[("trace_rate", &["0"])]).await,
        Code::InvalidArgument,
        "Attempting to set invalid trace setting :sample rate must be non-zero",
    );
    assert_status(
        trace_settings(&mut client, "", &[("trace_file", &["/tmp/x"])]).await,
        Code::Unimplemented,
        "trace file location can not be updated through network protocol",
    );
    assert_status(trace_settings(&mut client, "nope", &[]).await, Code::InvalidArgument, "Request for unknown model : nope");
    assert_eq!(trace_settings(&mut client, "", &[]).await.expect("get"), default_trace(), "nothing changed");
}

#[tokio::test]
async fn a_rejected_trace_update_changes_nothing() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let update: [(&str, &[&str]); 4] =
        [("trace_rate", &["10"]), ("trace_count", &["5"]), ("log_frequency", &["7"]), ("trace_level", &["OFF", "TIMESTAMPS"])];
    // The server walks the keys in hash order, so try a few times to have a good key come first.
    for _ in 0..10 {
        let status = trace_settings(&mut client, "", &update).await.expect_err("OFF with another level");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            trace_settings(&mut client, "", &[]).await.expect("get"),
            default_trace(),
            "a rejected update applies nothing"
        );
    }
}
