//! The table itself: every `ModelConfig` field Tritium knows, and the rules for the few whose
//! treatment depends on their value or on the model's backend.

use prost_reflect::Value;
use tritium_proto::inference::model_instance_group::Kind;

use super::Support::{Differs, Refused, Rule, Supported, Warned};
use super::{Field, Seen, Verdict, group_name, ignored, not_supported, sibling_i32};

const fn f(path: &'static str, support: super::Support) -> Field {
    Field { path, support }
}

const NO_GPU: &str = "it tunes GPU execution, and Tritium's instances run on the CPU (a Triton without GPUs ignores it too)";
/// Triton's own words for these two (it refuses them for every platform but TensorRT's).
const SHAPE_TENSORS: &str = "shape tensors are only supported for TensorRT platform";
const NON_LINEAR: &str = "Non-linear IO format is only supported for the TensorRT platform";
const TENSORRT: &str = "it applies to TensorRT models only, which Tritium does not serve";

/// Every field of `ModelConfig`, in the order of `model_config.proto`.
pub static FIELDS: &[Field] = &[
    f("name", Supported),
    f("platform", Supported),
    f("backend", Supported),
    f(
        "runtime",
        Rule {
            rule: runtime,
            doc: "supported when it names the backend's own library (`libtriton_<backend>.so`); **refused** otherwise (Tritium's backends are built in)",
        },
    ),
    f("version_policy", Supported),
    f("version_policy.latest", Supported),
    f("version_policy.latest.num_versions", Supported),
    f("version_policy.all", Supported),
    f("version_policy.specific", Supported),
    f("version_policy.specific.versions", Supported),
    f("max_batch_size", Supported),
    f("input", Supported),
    f("input.name", Supported),
    f("input.data_type", Supported),
    f(
        "input.format",
        Rule {
            rule: input_format,
            doc: "supported (shown in metadata, as in Triton); `FORMAT_NHWC` / `FORMAT_NCHW` need 3 dims, Triton's rule",
        },
    ),
    f("input.dims", Supported),
    f("input.reshape", Supported),
    f("input.reshape.shape", Supported),
    f("input.is_shape_tensor", Refused(SHAPE_TENSORS)),
    f("input.allow_ragged_batch", Supported),
    f("input.optional", Supported),
    f("input.is_non_linear_format_io", Refused(NON_LINEAR)),
    f("output", Supported),
    f("output.name", Supported),
    f("output.data_type", Supported),
    f("output.dims", Supported),
    f("output.reshape", Supported),
    f("output.reshape.shape", Supported),
    f("output.label_filename", Supported),
    f("output.is_shape_tensor", Refused(SHAPE_TENSORS)),
    f("output.is_non_linear_format_io", Refused(NON_LINEAR)),
    f("batch_input", Supported),
    f("batch_input.kind", Supported),
    f("batch_input.target_name", Supported),
    f("batch_input.data_type", Supported),
    f("batch_input.source_input", Supported),
    f("batch_output", Supported),
    f("batch_output.target_name", Supported),
    f("batch_output.kind", Supported),
    f("batch_output.source_input", Supported),
    f("optimization", Supported),
    f(
        "optimization.graph",
        Rule {
            rule: graph,
            doc: "supported by `onnxruntime` (ONNX Runtime's graph optimization level); *warned* for other backends, which Triton's ignore too",
        },
    ),
    f("optimization.graph.level", Supported),
    f("optimization.priority", Warned("instance thread priority only tunes performance")),
    f("optimization.cuda", Warned(NO_GPU)),
    f(
        "optimization.execution_accelerators",
        Warned("Tritium runs no execution accelerators (TensorRT, OpenVINO); models run on the plain CPU provider"),
    ),
    f(
        "optimization.input_pinned_memory",
        Differs("accepted; there is no GPU copy to pin memory for, as on a Triton without GPUs"),
    ),
    f("optimization.input_pinned_memory.enable", Supported),
    f(
        "optimization.output_pinned_memory",
        Differs("accepted; there is no GPU copy to pin memory for, as on a Triton without GPUs"),
    ),
    f("optimization.output_pinned_memory.enable", Supported),
    f("optimization.gather_kernel_buffer_threshold", Warned(NO_GPU)),
    f("optimization.eager_batching", Warned(TENSORRT)),
    f("dynamic_batching", Supported),
    f("dynamic_batching.preferred_batch_size", Supported),
    f("dynamic_batching.max_queue_delay_microseconds", Supported),
    f("dynamic_batching.preserve_ordering", Supported),
    f("dynamic_batching.priority_levels", Supported),
    f("dynamic_batching.default_priority_level", Supported),
    f("dynamic_batching.default_queue_policy", Supported),
    f("dynamic_batching.default_queue_policy.timeout_action", Supported),
    f("dynamic_batching.default_queue_policy.default_timeout_microseconds", Supported),
    f("dynamic_batching.default_queue_policy.allow_timeout_override", Supported),
    f("dynamic_batching.default_queue_policy.max_queue_size", Supported),
    f("dynamic_batching.priority_queue_policy", Supported),
    f("dynamic_batching.priority_queue_policy.timeout_action", Supported),
    f("dynamic_batching.priority_queue_policy.default_timeout_microseconds", Supported),
    f("dynamic_batching.priority_queue_policy.allow_timeout_override", Supported),
    f("dynamic_batching.priority_queue_policy.max_queue_size", Supported),
    f("sequence_batching", Supported),
    f("sequence_batching.max_sequence_idle_microseconds", Supported),
    f("sequence_batching.control_input", Supported),
    f("sequence_batching.control_input.name", Supported),
    f("sequence_batching.control_input.control", Supported),
    f("sequence_batching.control_input.control.kind", Supported),
    f("sequence_batching.control_input.control.int32_false_true", Supported),
    f("sequence_batching.control_input.control.fp32_false_true", Supported),
    f("sequence_batching.control_input.control.data_type", Supported),
    f("sequence_batching.control_input.control.bool_false_true", Supported),
    f("sequence_batching.direct", Supported),
    f("sequence_batching.direct.max_queue_delay_microseconds", Supported),
    f("sequence_batching.direct.minimum_slot_utilization", Supported),
    f("sequence_batching.oldest", Supported),
    f("sequence_batching.oldest.max_candidate_sequences", Supported),
    f("sequence_batching.oldest.preferred_batch_size", Supported),
    f("sequence_batching.oldest.max_queue_delay_microseconds", Supported),
    f(
        "sequence_batching.oldest.preserve_ordering",
        Rule {
            rule: oldest_ordering,
            doc: "supported with one instance (its batches run one after another); **refused** with more, where batches may finish out of order",
        },
    ),
    f("sequence_batching.state", Supported),
    f("sequence_batching.state.input_name", Supported),
    f("sequence_batching.state.output_name", Supported),
    f("sequence_batching.state.data_type", Supported),
    f("sequence_batching.state.dims", Supported),
    f("sequence_batching.state.initial_state", Supported),
    f("sequence_batching.state.initial_state.data_type", Supported),
    f("sequence_batching.state.initial_state.dims", Supported),
    f("sequence_batching.state.initial_state.zero_data", Supported),
    f("sequence_batching.state.initial_state.data_file", Supported),
    f("sequence_batching.state.initial_state.name", Supported),
    f(
        "sequence_batching.state.use_same_buffer_for_input_output",
        Warned("a buffer-sharing hint; Tritium keeps each sequence's state as a tensor of its own either way"),
    ),
    f("sequence_batching.state.use_growable_memory", Warned(NO_GPU)),
    f("sequence_batching.iterative_sequence", Refused("iterative sequences are not implemented")),
    f("ensemble_scheduling", Supported),
    f("ensemble_scheduling.step", Supported),
    f("ensemble_scheduling.step.model_name", Supported),
    f("ensemble_scheduling.step.model_version", Supported),
    f("ensemble_scheduling.step.input_map", Supported),
    f("ensemble_scheduling.step.output_map", Supported),
    f("ensemble_scheduling.step.model_namespace", Refused("model namespacing is not implemented")),
    f("ensemble_scheduling.max_inflight_requests", Supported),
    f("instance_group", Supported),
    f("instance_group.name", Supported),
    f(
        "instance_group.kind",
        Rule {
            rule: instance_kind,
            doc: "supported: `KIND_CPU`, `KIND_AUTO` (as CPU), `KIND_MODEL`; `KIND_GPU` **refused** in Triton's words (\"... has kind KIND_GPU but server does not support GPUs\"), except by `onnxruntime` built with `cuda`",
        },
    ),
    f("instance_group.count", Supported),
    f("instance_group.rate_limiter", Supported),
    f("instance_group.rate_limiter.resources", Supported),
    f("instance_group.rate_limiter.resources.name", Supported),
    f("instance_group.rate_limiter.resources.global", Supported),
    f("instance_group.rate_limiter.resources.count", Supported),
    f("instance_group.rate_limiter.priority", Supported),
    f(
        "instance_group.gpus",
        Rule {
            rule: instance_gpus,
            doc: "**refused** (\"... has kind KIND_CPU but specifies one or more GPUs\", Triton's words), except by `onnxruntime` built with `cuda`",
        },
    ),
    f("instance_group.secondary_devices", Warned(TENSORRT)),
    f("instance_group.profile", Warned(TENSORRT)),
    f(
        "instance_group.passive",
        Refused("every instance of a Tritium model takes requests; passive instances are not implemented"),
    ),
    f("instance_group.host_policy", Warned("host policies (NUMA placement) only tune performance")),
    f("default_model_filename", Supported),
    f(
        "cc_model_filenames",
        Warned("it picks a file by GPU compute capability; without a GPU `default_model_filename` is used, as Triton does"),
    ),
    f(
        "metric_tags",
        Rule {
            rule: metric_tags,
            doc: "supported: each tag labels the model's metrics `_<key>=\"<value>\"`, as Triton; a key that is not letters, digits and `_` (or starts with `_`) is **refused**",
        },
    ),
    f("parameters", Supported),
    f("parameters.string_value", Supported),
    f("model_warmup", Supported),
    f("model_warmup.name", Supported),
    f("model_warmup.batch_size", Supported),
    f("model_warmup.inputs", Supported),
    f("model_warmup.inputs.data_type", Supported),
    f("model_warmup.inputs.dims", Supported),
    f("model_warmup.inputs.zero_data", Supported),
    f("model_warmup.inputs.random_data", Supported),
    f("model_warmup.inputs.input_data_file", Supported),
    f("model_warmup.count", Supported),
    f("model_operations", Refused("custom operation libraries are not loaded")),
    f("model_transaction_policy", Supported),
    f("model_transaction_policy.decoupled", Supported),
    f("model_repository_agents", Refused("repository agents (checksum, encryption) are not run")),
    f("response_cache", Supported),
    f("response_cache.enable", Supported),
    f(
        "model_metrics",
        Refused("per-model metric controls (histogram buckets) are not implemented (Triton 2.51 does not know the field)"),
    ),
];

fn is_onnxruntime(backend: &str) -> bool {
    backend == "onnxruntime" || backend == "onnxruntime_onnx"
}

fn runtime(seen: &Seen<'_>) -> Option<Verdict> {
    let Value::String(runtime) = seen.value else { return None };
    let own = format!("libtriton_{}.so", seen.backend);
    (*runtime != own).then(|| {
        Verdict::Refuse(not_supported(
            "runtime",
            &format!("'{runtime}' is not this backend's own library ('{own}'); Tritium's backends are built in"),
        ))
    })
}

/// A tag becomes the Prometheus label `_<key>`: the key must make a label name Prometheus takes
/// and does not reserve (`__...`).
fn metric_tags(seen: &Seen<'_>) -> Option<Verdict> {
    let Value::Map(tags) = seen.value else { return None };
    let bad = tags.keys().find_map(|key| match key {
        prost_reflect::MapKey::String(key) if valid_tag(key) => None,
        prost_reflect::MapKey::String(key) => Some(key.clone()),
        _ => Some(String::new()),
    })?;
    let shown: String = bad.chars().take(64).collect();
    Some(Verdict::Refuse(not_supported(
        "metric_tags",
        &format!("the key '{shown}' cannot name a metric label (letters, digits and '_', not starting with '_')"),
    )))
}

/// Whether `key` makes the metric label `_<key>`.
pub fn valid_tag(key: &str) -> bool {
    !key.is_empty() && !key.starts_with('_') && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn input_format(seen: &Seen<'_>) -> Option<Verdict> {
    use tritium_proto::inference::model_input::Format;
    let Value::EnumNumber(format) = seen.value else { return None };
    let dims = match seen.parent.get_field_by_name("dims").as_deref() {
        Some(Value::List(dims)) => dims.len(),
        _ => 0,
    };
    let layout = *format == Format::Nhwc as i32 || *format == Format::Nchw as i32;
    (layout && dims != 3).then(|| Verdict::Refuse("model input NHWC/NCHW require 3 dims".to_string()))
}

fn graph(seen: &Seen<'_>) -> Option<Verdict> {
    (!is_onnxruntime(seen.backend)).then(|| {
        Verdict::Warn(ignored(
            "optimization.graph",
            &format!("graph optimization levels are ONNX Runtime's, and backend '{}' has none", seen.backend),
        ))
    })
}

fn oldest_ordering(seen: &Seen<'_>) -> Option<Verdict> {
    let groups = &seen.config.instance_group;
    let one_instance =
        !groups.is_empty() && groups.iter().all(|g| g.count >= 1) && groups.iter().map(|g| g.count).sum::<i32>() == 1;
    (*seen.value == Value::Bool(true) && !one_instance).then(|| {
        Verdict::Refuse(not_supported(
            "sequence_batching.oldest.preserve_ordering",
            "responses are ordered only with one instance (instance_group [ { count: 1 } ])",
        ))
    })
}

fn instance_kind(seen: &Seen<'_>) -> Option<Verdict> {
    let gpu = *seen.value == Value::EnumNumber(Kind::Gpu as i32);
    (gpu && !is_onnxruntime(seen.backend)).then(|| {
        Verdict::Refuse(format!(
            "instance group {} of model {} has kind KIND_GPU but server does not support GPUs",
            group_name(seen),
            seen.model
        ))
    })
}

fn instance_gpus(seen: &Seen<'_>) -> Option<Verdict> {
    let kind = sibling_i32(seen, "kind");
    // A KIND_GPU group is refused by its kind; onnxruntime checks its groups itself.
    if is_onnxruntime(seen.backend) || kind == Kind::Gpu as i32 {
        return None;
    }
    let name = group_name(seen);
    Some(Verdict::Refuse(if kind == Kind::Model as i32 {
        format!("instance group {name} of model {} specifies GPUs but server does not support GPUs", seen.model)
    } else {
        format!("instance group {name} of model {} has kind KIND_CPU but specifies one or more GPUs", seen.model)
    }))
}
