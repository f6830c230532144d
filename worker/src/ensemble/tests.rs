#![allow(clippy::unwrap_used)]

use tritium_tensor::Tensor;

use crate::{DeclaredModel, InferenceRequest, ModelRepository, RepositoryOptions};

const ADD_SUB: &str = r#"
backend: "add_sub"
input [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ 4 ] }, { name: "INPUT1", data_type: TYPE_INT32, dims: [ 4 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ 4 ] }, { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 4 ] } ]
"#;

/// An ensemble over add_sub: `steps` is the text inside `step [ ]`.
fn ensemble(steps: &str) -> String {
    format!(
        r#"
platform: "ensemble"
input [ {{ name: "A", data_type: TYPE_INT32, dims: [ 4 ] }}, {{ name: "B", data_type: TYPE_INT32, dims: [ 4 ] }} ]
output [ {{ name: "X", data_type: TYPE_INT32, dims: [ 4 ] }}, {{ name: "Y", data_type: TYPE_INT32, dims: [ 4 ] }} ]
ensemble_scheduling {{ step [ {steps} ] }}
"#
    )
}

fn step(model: &str, inputs: [&str; 2], outputs: [&str; 2]) -> String {
    format!(
        r#"{{ model_name: "{model}" model_version: -1
             input_map {{ key: "INPUT0" value: "{}" }} input_map {{ key: "INPUT1" value: "{}" }}
             output_map {{ key: "OUTPUT0" value: "{}" }} output_map {{ key: "OUTPUT1" value: "{}" }} }}"#,
        inputs[0], inputs[1], outputs[0], outputs[1]
    )
}

fn repository(ensemble_config: &str) -> std::sync::Arc<ModelRepository> {
    let declared = vec![
        // The ensemble first: loading orders it after the models it is made of.
        DeclaredModel { name: "ens".into(), config_text: ensemble_config.into() },
        DeclaredModel { name: "add_sub".into(), config_text: ADD_SUB.into() },
    ];
    ModelRepository::open(RepositoryOptions { declared, ..Default::default() }, crate::builtin_backends()).unwrap()
}

fn load_error(ensemble_config: &str) -> String {
    let repository = repository(ensemble_config);
    assert!(repository.resolve("add_sub", None).is_ok());
    let entry = repository.index(false).unwrap().into_iter().find(|e| e.name == "ens").unwrap();
    assert!(repository.resolve("ens", None).is_err(), "a broken ensemble is not served");
    entry.reason
}

#[tokio::test]
async fn two_steps_chain_through_their_tensors() {
    let two = [step("add_sub", ["A", "B"], ["sum", "difference"]), step("add_sub", ["sum", "difference"], ["X", "Y"])].join(",");
    let repository = repository(&ensemble(&two));
    let inputs = vec![Tensor::from_slice("A", vec![4], &[1i32, 2, 3, 4]), Tensor::from_slice("B", vec![4], &[10i32, 20, 30, 40])];
    let valid = repository.validate(InferenceRequest::new("ens", inputs)).unwrap();
    let response = crate::ModelVersion::run_unary(valid).await.unwrap();
    let get = |name: &str| response.outputs.iter().find(|o| o.name == name).unwrap().to_vec::<i32>().unwrap();
    assert_eq!(get("X"), [2, 4, 6, 8]);
    assert_eq!(get("Y"), [20, 40, 60, 80]);
    let add_sub = repository.resolve("add_sub", None).unwrap().stats.snapshot();
    assert_eq!((add_sub.inference_count, add_sub.execution_count), (2, 2), "each step ran on add_sub itself");
    let ens = repository.resolve("ens", None).unwrap().stats.snapshot();
    assert_eq!((ens.inference_count, ens.execution_count), (1, 1));
}

#[tokio::test]
async fn a_steps_error_names_the_ensemble() {
    // The ensemble takes any length; add_sub only 4 elements: a step refuses what the ensemble took.
    let one = step("add_sub", ["A", "B"], ["X", "Y"]);
    let repository = repository(&ensemble(&one).replace("dims: [ 4 ]", "dims: [ -1 ]"));
    let inputs = vec![Tensor::from_slice("A", vec![3], &[1i32; 3]), Tensor::from_slice("B", vec![3], &[1i32; 3])];
    let valid = repository.validate(InferenceRequest::new("ens", inputs)).unwrap();
    let error = crate::ModelVersion::run_unary(valid).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("in ensemble 'ens', [request id: <id_unknown>] unexpected shape for input 'INPUT0'"),
        "{message}"
    );
    assert_eq!(error.code(), tritium_proto::ErrorCode::InvalidArg);
    assert_eq!(repository.resolve("ens", None).unwrap().stats.snapshot().fail.0, 1);
}

#[test]
fn broken_graphs_fail_the_load_with_a_reason() {
    let unknown = step("nope", ["A", "B"], ["X", "Y"]);
    assert_eq!(
        load_error(&ensemble(&unknown)),
        "load failed for model 'ens': ensemble ens contains models that are not available or ambiguous: nope"
    );
    let wrong_input = step("add_sub", ["A", "B"], ["X", "Y"]).replace(r#"key: "INPUT1""#, r#"key: "WRONG""#);
    assert!(
        load_error(&ensemble(&wrong_input)).contains("ensemble tensor B is mapping to non-existing input WRONG in model add_sub")
    );
    let unwritten = step("add_sub", ["A", "nothing"], ["X", "Y"]);
    assert!(load_error(&ensemble(&unwritten)).contains("reads ensemble tensor 'nothing', which no input or step writes"));
    let twice = [step("add_sub", ["A", "B"], ["X", "Y"]), step("add_sub", ["A", "B"], ["X", "t"])].join(",");
    assert!(load_error(&ensemble(&twice)).contains("ensemble tensor 'X' can appear in an output map only once"));
    let cycle = [
        step("add_sub", ["A", "B"], ["X", "Y"]).replace(r#"value: "B""#, r#"value: "loop1""#),
        step("add_sub", ["A", "X"], ["loop1", "unused"]),
    ]
    .join(",");
    let reason = load_error(&ensemble(&cycle));
    assert!(reason.contains("is unused") || reason.contains("has a cycle"), "{reason}");
    let closed_loop = [step("add_sub", ["A", "l2"], ["X", "l1"]), step("add_sub", ["l1", "B"], ["l2", "Y"])].join(",");
    assert!(load_error(&ensemble(&closed_loop)).contains("has a cycle"));
}
