//! Tensor models served as text scorers and classifiers on the OpenAI door (their config's
//! `openai_task`): the bridge's [`TextModel`] built once per loaded version, and its token rows run
//! as the model's own INT64 (or INT32) `input_ids`, `attention_mask` and `token_type_ids`, split
//! into batches the model takes.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tritium_backend_api::InferenceRequest;
use tritium_openai_bridge::BridgeError;
use tritium_openai_bridge::text_models::{DEFAULT_MAX_TOKENS, TextModel, TextTaskKind, TokenRows};
use tritium_proto::inference::DataType as ConfigDataType;
use tritium_tensor::Tensor;
use tritium_worker::model::ModelVersion;
use tritium_worker::text_task::{TextTask, TextTaskKind as TaskKind};

/// Built text models by name, with the task they were built from (a reload brings a new one).
#[derive(Debug, Default)]
pub(super) struct TextModels(Mutex<HashMap<String, (Arc<TextTask>, Arc<TextModel>)>>);

impl TextModels {
    pub(super) fn get(&self, name: &str, version: &ModelVersion) -> Option<Arc<TextModel>> {
        let task = version.text_task.as_ref()?;
        if let Some((built_from, model)) = self.0.lock().get(name)
            && Arc::ptr_eq(built_from, task)
        {
            return Some(Arc::clone(model));
        }
        let kind = match task.kind {
            TaskKind::Score => TextTaskKind::Score,
            TaskKind::Classify => TextTaskKind::Classify,
        };
        let output = version.config.output.first()?;
        let labels = version
            .schema
            .labels(&output.name)
            .map(|labels| {
                (0..labels.len()).filter_map(|i| labels.get(i)).map(|l| String::from_utf8_lossy(l).into_owned()).collect()
            })
            .unwrap_or_default();
        let max_tokens = tritium_backend_api::config_parameter(&version.config, "max_tokens")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_TOKENS);
        match TextModel::new(kind, &task.tokenizer_json, labels, max_tokens) {
            Ok(model) => {
                let model = Arc::new(model);
                self.0.lock().insert(name.to_string(), (Arc::clone(task), Arc::clone(&model)));
                Some(model)
            }
            Err(reason) => {
                tracing::warn!(model = name, "not served as a text model: {reason}");
                None
            }
        }
    }
}

/// The model's first output for each row.
pub(super) async fn run(name: &str, version: Arc<ModelVersion>, rows: TokenRows) -> Result<Vec<Vec<f32>>, BridgeError> {
    let config = Arc::clone(&version.config);
    let output = config.output.first().map(|o| o.name.clone()).ok_or_else(|| BridgeError::Internal("no output".into()))?;
    let batch = match config.max_batch_size {
        n if n > 0 => usize::try_from(n).unwrap_or(1),
        _ => rows.len().max(1),
    };
    let mut answers = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch) {
        let width = chunk.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let shape = vec![chunk.len() as i64, width as i64];
        let mut inputs = Vec::new();
        for input in &config.input {
            let values: Vec<i64> = match input.name.as_str() {
                "input_ids" => padded(chunk, width, |(ids, _), i| ids.get(i).map(|&id| i64::from(id))),
                "attention_mask" => padded(chunk, width, |(ids, _), i| (i < ids.len()).then_some(1)),
                "token_type_ids" => padded(chunk, width, |(_, types), i| types.get(i).map(|&t| i64::from(t))),
                other => {
                    let reason =
                        format!("its input '{other}' is not one a text model fills (input_ids, attention_mask, token_type_ids)");
                    return Err(BridgeError::Unsupported { model: name.to_string(), what: reason });
                }
            };
            let tensor = if input.data_type == ConfigDataType::TypeInt32 as i32 {
                let narrow: Vec<i32> = values.iter().map(|&v| i32::try_from(v).unwrap_or(i32::MAX)).collect();
                Tensor::from_slice(input.name.clone(), shape.clone(), &narrow)
            } else {
                Tensor::from_slice(input.name.clone(), shape.clone(), &values)
            };
            inputs.push(tensor);
        }
        let mut request = InferenceRequest::new(name, inputs);
        request.requested_outputs = vec![output.clone()];
        let response = version.infer_unary(request).await.map_err(|e| BridgeError::Internal(e.to_string()))?;
        let tensor = response.outputs.into_iter().next().ok_or_else(|| BridgeError::Internal(format!("no '{output}' output")))?;
        let values: Vec<f32> = tensor.to_vec().map_err(|e| BridgeError::Internal(format!("output '{output}': {e}")))?;
        let per_row = values.len() / chunk.len().max(1);
        if per_row == 0 || per_row * chunk.len() != values.len() {
            return Err(BridgeError::Internal(format!("output '{output}' has {} values for {} rows", values.len(), chunk.len())));
        }
        answers.extend(values.chunks(per_row).map(<[f32]>::to_vec));
    }
    Ok(answers)
}

/// `[rows, width]` values, zero past each row's end.
fn padded(rows: &[(Vec<u32>, Vec<u32>)], width: usize, value: impl Fn(&(Vec<u32>, Vec<u32>), usize) -> Option<i64>) -> Vec<i64> {
    let mut values = Vec::with_capacity(rows.len() * width);
    for row in rows {
        values.extend((0..width).map(|i| value(row, i).unwrap_or(0)));
    }
    values
}
