//! Answers of the read-only RPCs built from the model registry: model metadata, statistics and
//! the repository index.

use tritium_proto::inference::model_metadata_response::TensorMetadata;
use tritium_proto::inference::repository_index_response::ModelIndex;
use tritium_proto::inference::{
    InferBatchStatistics, InferStatistics, ModelMetadataResponse, ModelStatistics, StatisticDuration,
};
use tritium_worker::{IndexEntry, ModelVersion, ServedModel};

/// ModelMetadata: KServe datatype strings, and a leading -1 on every shape of a batching model.
pub fn model_metadata(model: &ServedModel, version: &ModelVersion, version_was_asked: bool) -> ModelMetadataResponse {
    let schema = &version.schema;
    let tensors = |specs: &[tritium_worker::schema::TensorSpec]| {
        specs
            .iter()
            .map(|spec| TensorMetadata {
                name: spec.name.clone(),
                datatype: spec.datatype.kserve_name().to_string(),
                shape: schema.public_shape(spec),
            })
            .collect()
    };
    let versions =
        if version_was_asked { vec![version.version.to_string()] } else { model.versions.keys().map(i64::to_string).collect() };
    let config = &version.config;
    ModelMetadataResponse {
        name: model.name.clone(),
        versions,
        platform: if config.platform.is_empty() { config.backend.clone() } else { config.platform.clone() },
        inputs: tensors(&schema.inputs),
        outputs: tensors(&schema.outputs),
    }
}

fn duration((count, ns): (u64, u64)) -> Option<StatisticDuration> {
    Some(StatisticDuration { count, ns })
}

pub fn model_statistics(version: &ModelVersion) -> ModelStatistics {
    let s = version.stats.snapshot();
    ModelStatistics {
        name: version.name.to_string(),
        version: version.version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.compute_input),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.compute_output),
            cache_hit: duration(s.cache_hit),
            cache_miss: duration(s.cache_miss),
        }),
        batch_stats: s
            .batch_stats
            .iter()
            .map(|b| InferBatchStatistics {
                batch_size: b.batch_size,
                compute_input: duration(b.compute_input),
                compute_infer: duration(b.compute_infer),
                compute_output: duration(b.compute_output),
            })
            .collect(),
        ..Default::default()
    }
}

pub fn index_entry(entry: IndexEntry) -> ModelIndex {
    ModelIndex {
        name: entry.name,
        version: entry.version.map(|v| v.to_string()).unwrap_or_default(),
        state: entry.state.map(|s| s.as_str().to_string()).unwrap_or_default(),
        reason: entry.reason,
    }
}
