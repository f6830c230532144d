use std::collections::HashSet;

use super::*;
use crate::parse_config_text;

const IO: &str = r#"
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"#;

fn check(backend: &str, extra: &str) -> Result<Vec<FieldWarning>, String> {
    let text = format!("backend: \"{backend}\"\n{IO}\n{extra}");
    let config = parse_config_text(&text).unwrap_or_else(|e| panic!("{extra}: {e}"));
    check_fields("m", &config).map_err(|e| {
        assert_eq!(e.code(), tritium_proto::ErrorCode::InvalidArg, "{e}");
        e.to_string()
    })
}

/// A config that sets each refused field (the path it must name, its snippet).
const REFUSED: &[(&str, &str)] = &[
    ("input.is_shape_tensor", r#"input [ { name: "S" data_type: TYPE_INT32 dims: [ 1 ] is_shape_tensor: true } ]"#),
    (
        "input.is_non_linear_format_io",
        r#"input [ { name: "S" data_type: TYPE_FP32 dims: [ 1 ] is_non_linear_format_io: true } ]"#,
    ),
    ("output.is_shape_tensor", r#"output [ { name: "S" data_type: TYPE_INT32 dims: [ 1 ] is_shape_tensor: true } ]"#),
    (
        "output.is_non_linear_format_io",
        r#"output [ { name: "S" data_type: TYPE_FP32 dims: [ 1 ] is_non_linear_format_io: true } ]"#,
    ),
    ("sequence_batching.iterative_sequence", "sequence_batching { iterative_sequence: true }"),
    (
        "ensemble_scheduling.step.model_namespace",
        r#"ensemble_scheduling { step [ { model_name: "a" model_version: -1 model_namespace: "ns" } ] }"#,
    ),
    ("instance_group.passive", "instance_group [ { count: 1 kind: KIND_CPU passive: true } ]"),
    ("model_operations", r#"model_operations { op_library_filename: "libcustom.so" }"#),
    ("model_repository_agents", r#"model_repository_agents { agents [ { name: "checksum" } ] }"#),
    ("model_metrics", r#"model_metrics { metric_control [ { metric_identifier { family: "x" } } ] }"#),
];

/// A config that sets each warned field.
const WARNED: &[(&str, &str)] = &[
    ("optimization.priority", "optimization { priority: PRIORITY_MAX }"),
    ("optimization.cuda", "optimization { cuda { graphs: true } }"),
    (
        "optimization.execution_accelerators",
        r#"optimization { execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }"#,
    ),
    ("optimization.gather_kernel_buffer_threshold", "optimization { gather_kernel_buffer_threshold: 4 }"),
    ("optimization.eager_batching", "optimization { eager_batching: true }"),
    (
        "sequence_batching.state.use_same_buffer_for_input_output",
        r#"sequence_batching { state [ { input_name: "I" output_name: "O" data_type: TYPE_FP32 dims: [ 1 ] use_same_buffer_for_input_output: true } ] }"#,
    ),
    (
        "sequence_batching.state.use_growable_memory",
        r#"sequence_batching { state [ { input_name: "I" output_name: "O" data_type: TYPE_FP32 dims: [ 1 ] use_growable_memory: true } ] }"#,
    ),
    (
        "instance_group.secondary_devices",
        "instance_group [ { kind: KIND_CPU secondary_devices [ { kind: KIND_NVDLA device_id: 0 } ] } ]",
    ),
    ("instance_group.profile", r#"instance_group [ { kind: KIND_CPU profile: [ "0" ] } ]"#),
    ("instance_group.host_policy", r#"instance_group [ { kind: KIND_CPU host_policy: "numa0" } ]"#),
    ("cc_model_filenames", r#"cc_model_filenames { key: "7.5" value: "model_t4.onnx" }"#),
];

#[test]
fn every_field_of_model_config_is_classified() {
    let paths = all_paths().expect("descriptor");
    assert!(paths.len() > 100, "{}", paths.len());
    // A refused or warned field covers what is beneath it; anything else needs its own row.
    let covered = |path: &str| {
        let mut prefix = path;
        while let Some((parent, _)) = prefix.rsplit_once('.') {
            if matches!(lookup(parent).map(|f| f.support), Some(Support::Refused(_) | Support::Warned(_))) {
                return true;
            }
            prefix = parent;
        }
        false
    };
    let missing: Vec<&String> = paths.iter().filter(|p| lookup(p).is_none() && !covered(p)).collect();
    assert!(missing.is_empty(), "model_config.proto fields the table does not classify: {missing:?}");
    let known: HashSet<&str> = paths.iter().map(String::as_str).collect();
    let stale: Vec<&str> = FIELDS.iter().map(|f| f.path).filter(|p| !known.contains(p)).collect();
    assert!(stale.is_empty(), "rows for fields model_config.proto does not have: {stale:?}");
    let mut seen = HashSet::new();
    let twice: Vec<&str> = FIELDS.iter().map(|f| f.path).filter(|p| !seen.insert(*p)).collect();
    assert!(twice.is_empty(), "rows given twice: {twice:?}");
}

#[test]
fn each_refused_field_fails_the_load_naming_it() {
    for (path, snippet) in REFUSED {
        let error = check("identity", snippet).expect_err(path);
        let expected = format!("invalid configuration of model 'm': config field '{path}' is not supported by Tritium: ");
        assert!(error.starts_with(&expected), "{path}: {error}");
    }
    let refused: Vec<&str> = FIELDS.iter().filter(|f| matches!(f.support, Support::Refused(_))).map(|f| f.path).collect();
    let tested: Vec<&str> = REFUSED.iter().map(|(p, _)| *p).collect();
    assert_eq!(refused, tested, "every refused row has a case here, in table order");
}

#[test]
fn each_warned_field_loads_and_is_named_once() {
    for (path, snippet) in WARNED {
        let warnings = check("identity", snippet).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(warnings.len(), 1, "{path}: {warnings:?}");
        assert_eq!(warnings[0].path, *path);
        assert!(warnings[0].message.starts_with(&format!("config field '{path}' is ignored by Tritium: ")), "{warnings:?}");
    }
    let warned: Vec<&str> = FIELDS.iter().filter(|f| matches!(f.support, Support::Warned(_))).map(|f| f.path).collect();
    let tested: Vec<&str> = WARNED.iter().map(|(p, _)| *p).collect();
    assert_eq!(warned, tested, "every warned row has a case here, in table order");
}

#[test]
fn a_field_in_many_entries_is_named_once_and_refusals_all_at_once() {
    let groups = r#"instance_group [ { kind: KIND_CPU host_policy: "a" }, { kind: KIND_CPU host_policy: "b" } ]"#;
    let warnings = check("identity", groups).expect("loads");
    assert_eq!(warnings.iter().map(|w| w.path.as_str()).collect::<Vec<_>>(), ["instance_group.host_policy"]);
    let two = r#"model_operations { op_library_filename: "x.so" } model_metrics { }"#;
    let error = check("identity", two).expect_err("refused");
    assert!(error.contains("'model_operations'") && error.contains("'model_metrics'"), "{error}");
}

#[test]
fn supported_fields_load_without_a_word() {
    let full = r#"
        platform: "" max_batch_size: 8
        version_policy { specific { versions: [ 1, 2 ] } }
        input [ { name: "R" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true optional: true reshape { shape: [ -1 ] } } ]
        input [ { name: "IMG" data_type: TYPE_FP32 dims: [ 3, 4, 4 ] format: FORMAT_NCHW } ]
        output [ { name: "L" data_type: TYPE_STRING dims: [ 1 ] label_filename: "labels.txt" } ]
        batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_FP32 source_input: "R" } ]
        batch_output [ { target_name: "L" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "R" } ]
        optimization { input_pinned_memory { enable: true } output_pinned_memory { enable: false } }
        dynamic_batching {
          preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 100 preserve_ordering: true
          priority_levels: 2 default_priority_level: 1
          default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 5 allow_timeout_override: true max_queue_size: 3 }
          priority_queue_policy { key: 2 value: { max_queue_size: 1 } }
        }
        instance_group [ { name: "g" kind: KIND_MODEL count: 2 rate_limiter { resources [ { name: "r" global: true count: 1 } ] priority: 2 } } ]
        instance_group [ { kind: KIND_AUTO } ]
        default_model_filename: "model.bin"
        parameters { key: "k" value { string_value: "v" } }
        model_warmup [ { name: "w" batch_size: 1 count: 2 inputs { key: "R" value { data_type: TYPE_FP32 dims: [ 1 ] random_data: true } } } ]
        model_transaction_policy { decoupled: false }
        response_cache { enable: true }
        runtime: "libtriton_identity.so"
    "#;
    assert_eq!(check("identity", full), Ok(vec![]));
    let sequence = r#"
        sequence_batching {
          max_sequence_idle_microseconds: 1000
          oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 10 preserve_ordering: true }
          control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] } ]
          control_input [ { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] } ]
          state [ { input_name: "I" output_name: "O" data_type: TYPE_FP32 dims: [ 1 ]
                    initial_state [ { name: "s" data_type: TYPE_FP32 dims: [ 1 ] zero_data: true } ] } ]
        }
        instance_group [ { count: 1 } ]
    "#;
    assert_eq!(check("identity", sequence), Ok(vec![]));
    let ensemble = r#"ensemble_scheduling { max_inflight_requests: 4 step [ { model_name: "a" model_version: 1 input_map { key: "x" value: "y" } output_map { key: "z" value: "w" } } ] }"#;
    assert_eq!(check("", ensemble), Ok(vec![]));
    let direct = "sequence_batching { direct { max_queue_delay_microseconds: 10 minimum_slot_utilization: 0.5 } }";
    assert_eq!(check("identity", direct), Ok(vec![]));
}

#[test]
fn kind_gpu_and_gpus_are_refused_in_tritons_words_unless_onnxruntime_decides() {
    let error = check("identity", "instance_group [ { count: 1 kind: KIND_CPU }, { kind: KIND_GPU } ]").expect_err("gpu");
    assert_eq!(
        error,
        "invalid configuration of model 'm': instance group m_1 of model m has kind KIND_GPU but server does not support GPUs"
    );
    let error = check("python", r#"instance_group [ { name: "g" kind: KIND_CPU gpus: [ 0 ] } ]"#).expect_err("gpus");
    assert!(error.ends_with("instance group g of model m has kind KIND_CPU but specifies one or more GPUs"), "{error}");
    let error = check("identity", r#"instance_group [ { kind: KIND_MODEL gpus: [ 0 ] } ]"#).expect_err("gpus");
    assert!(error.ends_with("instance group m_0 of model m specifies GPUs but server does not support GPUs"), "{error}");
    let error = check("identity", "instance_group [ { kind: KIND_GPU gpus: [ 0, 1 ] } ]").expect_err("gpu");
    assert!(!error.contains("specifies"), "named once, by its kind: {error}");
    // The onnxruntime backend runs GPU groups when built with `cuda`, and refuses them itself otherwise.
    assert_eq!(check("onnxruntime", "instance_group [ { kind: KIND_GPU gpus: [ 0 ] } ]"), Ok(vec![]));
}

#[test]
fn metric_tags_name_labels_prometheus_takes() {
    let tags = r#"metric_tags { key: "team" value: "search \"a\"" } metric_tags { key: "Tier_2" value: "" }"#;
    assert_eq!(check("identity", tags), Ok(vec![]));
    for key in ["team-a", "_team", "", "tié"] {
        let error = check("identity", &format!(r#"metric_tags {{ key: "{key}" value: "x" }}"#)).expect_err(key);
        assert!(error.contains("config field 'metric_tags' is not supported by Tritium: the key"), "{key}: {error}");
    }
}

#[test]
fn runtime_must_name_the_backends_own_library() {
    assert_eq!(check("python", r#"runtime: "libtriton_python.so""#), Ok(vec![]));
    let error = check("python", r#"runtime: "model.py""#).expect_err("python-based backend");
    assert!(error.contains("config field 'runtime' is not supported by Tritium: 'model.py' is not"), "{error}");
}

#[test]
fn input_layouts_need_three_dims_as_in_triton() {
    let nhwc = r#"input [ { name: "X" data_type: TYPE_FP32 dims: [ 4, 4 ] format: FORMAT_NHWC } ]"#;
    assert_eq!(check("identity", nhwc), Err("invalid configuration of model 'm': model input NHWC/NCHW require 3 dims".into()));
    let three = r#"input [ { name: "X" data_type: TYPE_FP32 dims: [ 4, 4, 3 ] format: FORMAT_NHWC } ]"#;
    assert_eq!(check("identity", three), Ok(vec![]));
}

#[test]
fn graph_levels_are_onnxruntimes_and_warned_elsewhere() {
    let graph = "optimization { graph { level: 1 } }";
    assert_eq!(check("onnxruntime", graph), Ok(vec![]));
    assert_eq!(check("onnxruntime_onnx", graph), Ok(vec![]));
    let warnings = check("python", graph).expect("loads");
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].path, "optimization.graph");
    assert!(warnings[0].message.contains("backend 'python'"), "{warnings:?}");
}

#[test]
fn oldest_preserve_ordering_needs_exactly_one_instance() {
    let oldest = "sequence_batching { oldest { max_candidate_sequences: 2 preserve_ordering: true } }";
    assert_eq!(check("identity", &format!("{oldest} instance_group [ {{ count: 1 }} ]")), Ok(vec![]));
    for groups in
        ["", "instance_group [ { count: 2 } ]", "instance_group [ { count: 1 }, { count: 1 } ]", "instance_group [ { } ]"]
    {
        let error = check("identity", &format!("{oldest} {groups}")).expect_err(groups);
        assert!(error.contains("'sequence_batching.oldest.preserve_ordering'"), "{groups}: {error}");
    }
}

#[test]
fn the_triton_examples_load_without_a_word() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/triton_examples/model_repository");
    let mut count = 0;
    for entry in std::fs::read_dir(&root).expect("examples") {
        let dir = entry.expect("entry").path();
        let Ok(text) = std::fs::read_to_string(dir.join("config.pbtxt")) else { continue };
        let config = parse_config_text(&text).expect("parses");
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        assert_eq!(check_fields(&name, &config).map_err(|e| e.to_string()), Ok(vec![]), "{name}");
        count += 1;
    }
    assert!(count >= 5, "{count} examples");
}

#[test]
fn the_books_page_lists_every_field_as_the_table_does() {
    let page = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/model-repository/config-fields.md");
    let page = std::fs::read_to_string(page).expect("the book's config-fields page");
    let table = fields_markdown();
    assert!(
        page.contains(&table),
        "docs/src/model-repository/config-fields.md's table differs from the code's; put this one there:\n{table}"
    );
    assert_eq!(table.lines().count(), FIELDS.len() + 2);
}

#[test]
fn a_config_rendered_by_the_server_loads_back_without_a_word() {
    let text = format!("name: \"m\" backend: \"identity\"\n{IO}\ndynamic_batching {{ }}");
    let mut config = crate::normalize_config("m", parse_config_text(&text).expect("parses")).expect("valid");
    crate::fill_core_defaults(&mut config);
    let json = crate::render_config_json(&config).expect("renders");
    let back = crate::parse_config_json(&json).expect("parses back");
    assert_eq!(check_fields("m", &back).map_err(|e| e.to_string()), Ok(vec![]), "{json}");
}
