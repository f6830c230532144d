//! Triton's ragged batching, for every backend that takes a batch as one request (the built-ins,
//! ONNX Runtime): an input marked `allow_ragged_batch` may have another shape in each request of
//! a batch, and reaches the backend as one 1-D tensor, the requests' elements one after another
//! (shape `[total elements]`, as Triton's onnxruntime, TensorRT, TensorFlow and PyTorch backends
//! hand it over). Since that tensor no longer says where a request's part begins, the config's
//! `batch_input`s ask the server for extra input tensors made from the batch: element counts,
//! their running sums, the largest count as a shape, each item's shape. Every other input is
//! stacked along the batch dimension as usual, and outputs still have one row per batch item.
//!
//! An output named by a `batch_output` (`BATCH_SCATTER_WITH_INPUT_SHAPE`) is ragged too: the
//! model gives the requests' parts one after another, and each request gets as many elements as
//! the output's config shape holds once its -1 dimensions take the sizes of the request's source
//! input (Triton's backend output responder).
//!
//! The same happens to a request that runs alone (no dynamic batcher, or a batch of one), so a
//! model always sees one layout. A backend that takes lists of requests (Python) gets each
//! request's inputs as they came, and no batch inputs: Triton's python backend has none either.

use tritium_proto::inference::batch_input::Kind;
use tritium_proto::inference::batch_output::Kind as OutputKind;
use tritium_proto::inference::{DataType as ConfigDataType, ModelConfig};
use tritium_tensor::{DataType, Tensor};

use tritium_proto::ErrorCode;

use crate::batch_tensors::{compatible, split, stack};
use tritium_backend_api::{Backend, BackendError, BackendRequest, Responder};

/// A model's ragged inputs and the batch inputs the server makes for it, read once at load.
/// The default (no ragged input, no batch input) stacks requests as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaggedBatching {
    ragged: Vec<String>,
    batch_inputs: Vec<BatchInput>,
    batch_outputs: Vec<BatchOutput>,
}

/// One `batch_output` entry of the config, checked: its targets are cut by `source`'s shape.
#[derive(Debug, Clone, PartialEq)]
struct BatchOutput {
    targets: Vec<String>,
    source: String,
    /// The config shape of each target (with the batch dimension, -1, when the model batches).
    shapes: Vec<Vec<i64>>,
}

/// Per request of a batch, the shape of each scattered output (by target name), worked out
/// from the requests' inputs before they are laid out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scatter {
    shapes: Vec<(String, Vec<Vec<i64>>)>,
}

/// One `batch_input` entry of the config, checked.
#[derive(Debug, Clone, PartialEq)]
struct BatchInput {
    kind: Kind,
    /// The model inputs it fills (Triton's backends give each the same tensor).
    targets: Vec<String>,
    datatype: DataType,
    source: String,
}

impl RaggedBatching {
    /// The ragged inputs and batch inputs of `config`; an error, in Triton's words where it has
    /// them, for a `batch_input` that cannot be made.
    pub fn from_config(config: &ModelConfig) -> Result<RaggedBatching, String> {
        let ragged = config.input.iter().filter(|i| i.allow_ragged_batch).map(|i| i.name.clone()).collect();
        let batch_inputs = config.batch_input.iter().map(|b| check_batch_input(config, b)).collect::<Result<_, _>>()?;
        let batch_outputs = check_batch_outputs(config)?;
        Ok(RaggedBatching { ragged, batch_inputs, batch_outputs })
    }

    /// Whether requests go to the backend as they are, stacked, and outputs come back by rows.
    pub fn is_empty(&self) -> bool {
        self.ragged.is_empty() && self.batch_inputs.is_empty() && self.batch_outputs.is_empty()
    }

    pub fn is_ragged(&self, input: &str) -> bool {
        self.ragged.iter().any(|r| r == input)
    }

    /// Whether two requests' inputs may share a batch: same names and datatypes, and the same
    /// shape after the batch dimension except for ragged inputs.
    pub fn compatible(&self, a: &[Tensor], b: &[Tensor]) -> bool {
        compatible(a, b, |name| self.is_ragged(name))
    }

    /// The inputs the backend gets for a batch of requests (compatible ones, in batch order):
    /// every input stacked along the batch dimension, ragged inputs concatenated into
    /// `[total elements]` in their place, then one tensor per batch input target.
    pub fn assemble(&self, mut requests: Vec<Vec<Tensor>>) -> Result<Vec<Tensor>, String> {
        if self.is_empty() {
            return Ok(stack(requests));
        }
        let mut extra = Vec::new();
        for batch_input in &self.batch_inputs {
            let sources = requests
                .iter()
                .map(|inputs| {
                    inputs.iter().find(|t| t.name == batch_input.source).map(|t| t.shape.as_slice()).ok_or_else(|| {
                        format!(
                            "batch input '{}' is made from input '{}', which the request does not have",
                            batch_input.targets[0], batch_input.source
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let made = batch_input.make(&sources);
            extra.extend(batch_input.targets.iter().map(|target| Tensor { name: target.clone(), ..made.clone() }));
        }
        let Some(first) = requests.first() else { return Ok(extra) };
        let positions: Vec<usize> =
            first.iter().enumerate().filter(|(_, t)| self.is_ragged(&t.name)).map(|(index, _)| index).collect();
        let mut flat = Vec::with_capacity(positions.len());
        // Taken out from the back, so the positions before stay valid.
        for &position in positions.iter().rev() {
            let parts: Vec<Tensor> = requests.iter_mut().map(|inputs| inputs.remove(position)).collect();
            flat.push((position, concatenate(parts)));
        }
        let mut inputs = stack(requests);
        for (position, tensor) in flat.into_iter().rev() {
            inputs.insert(position.min(inputs.len()), tensor);
        }
        inputs.extend(extra);
        Ok(inputs)
    }

    /// The inputs `backend` gets for a request that runs on its own: laid out as a batch of one
    /// for a backend that stacks, as they came for one that takes lists.
    pub fn for_one(&self, backend: &dyn Backend, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        if self.is_empty() || backend.takes_request_lists() {
            return Ok(inputs);
        }
        self.assemble(vec![inputs]).map_err(|message| BackendError::failed(ErrorCode::InvalidArg, message))
    }

    /// Runs one request on its own on a backend that answers once: laid out by
    /// [`RaggedBatching::for_one`], its scattered outputs given the request's shapes.
    pub async fn run_one(&self, backend: &dyn Backend, request: BackendRequest) -> Result<Vec<Tensor>, BackendError> {
        let laid_out = !self.is_empty() && !backend.takes_request_lists();
        let scatter = if laid_out { self.scatter(std::slice::from_ref(&request.inputs)) } else { Scatter::default() };
        let inputs = self.for_one(backend, request.inputs)?;
        let mut responder = Responder::single();
        backend.execute(BackendRequest { inputs, ..request }, &mut responder).await?;
        let outputs = responder.take_single().ok_or(BackendError::NoResponse)?;
        if scatter.shapes.is_empty() {
            return Ok(outputs);
        }
        let mut parts =
            self.split(outputs, &[1], &scatter).map_err(|message| BackendError::failed(ErrorCode::Internal, message))?;
        Ok(parts.pop().unwrap_or_default())
    }

    /// The shapes the scattered outputs of a batch of `requests` will have, per request: the
    /// output's config shape with each -1 taken from the request's source input (a source the
    /// request lacks leaves the -1, which `split` reports).
    pub fn scatter(&self, requests: &[Vec<Tensor>]) -> Scatter {
        let mut shapes = Vec::new();
        for batch_output in &self.batch_outputs {
            let sources: Vec<Option<&[i64]>> = requests
                .iter()
                .map(|inputs| inputs.iter().find(|t| t.name == batch_output.source).map(|t| t.shape.as_slice()))
                .collect();
            for (target, shape) in batch_output.targets.iter().zip(&batch_output.shapes) {
                let per_request = sources
                    .iter()
                    .map(|source| {
                        let size = |index: usize, dim: i64| match (dim, source) {
                            (-1, Some(source)) => source.get(index).copied().unwrap_or(-1),
                            _ => dim,
                        };
                        shape.iter().enumerate().map(|(index, &dim)| size(index, dim)).collect()
                    })
                    .collect();
                shapes.push((target.clone(), per_request));
            }
        }
        Scatter { shapes }
    }

    /// Splits a batch's outputs into one set per request: scattered outputs by `scatter`'s
    /// shapes, the others `rows[i]` rows each (all of them to a request alone). Outputs keep
    /// their order.
    pub fn split(&self, outputs: Vec<Tensor>, rows: &[i64], scatter: &Scatter) -> Result<Vec<Vec<Tensor>>, String> {
        if scatter.shapes.is_empty() {
            return if rows.len() == 1 { Ok(vec![outputs]) } else { split(outputs, rows) };
        }
        let order: Vec<String> = outputs.iter().map(|t| t.name.clone()).collect();
        let (cut, plain): (Vec<Tensor>, Vec<Tensor>) =
            outputs.into_iter().partition(|t| scatter.shapes.iter().any(|(name, _)| name == &t.name));
        let mut parts = if rows.len() == 1 { vec![plain] } else { split(plain, rows)? };
        for output in cut {
            let Some((_, shapes)) = scatter.shapes.iter().find(|(name, _)| name == &output.name) else { continue };
            for (part, tensor) in parts.iter_mut().zip(scatter_one(&output, shapes)?) {
                part.push(tensor);
            }
        }
        for part in &mut parts {
            part.sort_by_key(|t| order.iter().position(|name| name == &t.name));
        }
        Ok(parts)
    }
}

/// `output`'s elements, one request's `shapes[i]` after another.
fn scatter_one(output: &Tensor, shapes: &[Vec<i64>]) -> Result<Vec<Tensor>, String> {
    let element_size = output.datatype.element_size().unwrap_or(1);
    let mut offset = 0usize;
    let mut parts = Vec::with_capacity(shapes.len());
    for shape in shapes {
        if shape.iter().any(|&d| d < 0) {
            return Err(format!("the output '{}' cannot be scattered to a request of shape {shape:?}", output.name));
        }
        let bytes = shape.iter().map(|&d| d as usize).product::<usize>() * element_size;
        let end = offset + bytes;
        if end > output.data.len() {
            return Err(format!(
                "the backend's output '{}' holds {} bytes, the requests' input shapes need at least {end}",
                output.name,
                output.data.len()
            ));
        }
        parts.push(Tensor::new(output.name.clone(), output.datatype, shape.clone(), output.data.slice(offset..end)));
        offset = end;
    }
    Ok(parts)
}

/// Triton's checks of `batch_output` (one source input that is an input, targets that are
/// outputs named once), and ours: a scattered output must have a fixed-size data type.
fn check_batch_outputs(config: &ModelConfig) -> Result<Vec<BatchOutput>, String> {
    let mut named = Vec::new();
    let mut checked = Vec::with_capacity(config.batch_output.len());
    for batch_output in &config.batch_output {
        let kind =
            OutputKind::try_from(batch_output.kind).map_err(|_| format!("unknown batch output kind '{}'", batch_output.kind))?;
        let [source] = batch_output.source_input.as_slice() else {
            return Err(format!(
                "batch output kind '{}' expects 1 source input, got {}",
                kind.as_str_name(),
                batch_output.source_input.len()
            ));
        };
        if !config.input.iter().any(|i| &i.name == source) {
            return Err(format!("unknown source input name '{source}'"));
        }
        let mut shapes = Vec::with_capacity(batch_output.target_name.len());
        for target in &batch_output.target_name {
            let output = config
                .output
                .iter()
                .find(|o| &o.name == target)
                .ok_or_else(|| format!("unknown target output name '{target}'"))?;
            if named.contains(&target) {
                return Err(format!("target output name '{target}' can only be specified once"));
            }
            named.push(target);
            if DataType::from_config(output.data_type).and_then(DataType::element_size).is_none() {
                return Err(format!("batch output target '{target}' must have a fixed-size data type to be scattered"));
            }
            let dims = output.reshape.as_ref().map_or(&output.dims, |r| &r.shape);
            let batch = (config.max_batch_size > 0).then_some(-1);
            shapes.push(batch.into_iter().chain(dims.iter().copied()).collect());
        }
        checked.push(BatchOutput { targets: batch_output.target_name.clone(), source: source.clone(), shapes });
    }
    Ok(checked)
}

fn check_batch_input(config: &ModelConfig, batch_input: &tritium_proto::inference::BatchInput) -> Result<BatchInput, String> {
    let kind = Kind::try_from(batch_input.kind).map_err(|_| format!("unknown batch input kind '{}'", batch_input.kind))?;
    let [source] = batch_input.source_input.as_slice() else {
        return Err(format!(
            "batch input kind '{}' expects 1 source input, got {}",
            kind.as_str_name(),
            batch_input.source_input.len()
        ));
    };
    let datatype = match ConfigDataType::try_from(batch_input.data_type) {
        Ok(ConfigDataType::TypeInt32) => DataType::Int32,
        Ok(ConfigDataType::TypeFp32) => DataType::Fp32,
        _ => return Err("batch input data type must be TYPE_INT32 or TYPE_FP32".to_string()),
    };
    if !config.input.iter().any(|i| &i.name == source) {
        return Err(format!("unknown source input name '{source}'"));
    }
    if batch_input.target_name.is_empty() {
        return Err(format!("batch input kind '{}' expects at least 1 target name, got 0", kind.as_str_name()));
    }
    if let Some(taken) = batch_input.target_name.iter().find(|t| config.input.iter().any(|i| &i.name == *t)) {
        return Err(format!("batch input target name '{taken}' is also an input of the model configuration"));
    }
    Ok(BatchInput { kind, targets: batch_input.target_name.clone(), datatype, source: source.clone() })
}

impl BatchInput {
    /// The tensor for a batch whose requests' source inputs have `shapes` (each with its batch
    /// dimension), named after the first target. Counts are of whole requests: a request of
    /// two rows [2, 3] counts 6 elements, as Triton counts them.
    fn make(&self, shapes: &[&[i64]]) -> Tensor {
        let counts = shapes.iter().map(|shape| shape.iter().product::<i64>());
        let accumulated = counts.clone().scan(0i64, |total, count| {
            *total += count;
            Some(*total)
        });
        let (values, shape): (Vec<i64>, Vec<i64>) = match self.kind {
            Kind::BatchElementCount => (counts.collect(), vec![shapes.len() as i64]),
            Kind::BatchAccumulatedElementCount => (accumulated.collect(), vec![shapes.len() as i64]),
            Kind::BatchAccumulatedElementCountWithZero => {
                (std::iter::once(0).chain(accumulated).collect(), vec![shapes.len() as i64 + 1])
            }
            // The largest count is the shape; Triton leaves the data uninitialized, here zeros.
            Kind::BatchMaxElementCountAsShape => {
                let max = counts.max().unwrap_or(0).max(0);
                (vec![0; usize::try_from(max).unwrap_or(0)], vec![max])
            }
            // One row per batch item (a request of two rows gives two), its shape after the
            // batch dimension.
            Kind::BatchItemShape | Kind::BatchItemShapeFlatten => {
                let width = shapes.first().map_or(0, |s| s.len().saturating_sub(1));
                let mut values = Vec::new();
                let mut items = 0i64;
                for shape in shapes {
                    let (rows, item) = shape.split_first().map_or((1, &[][..]), |(&rows, item)| (rows, item));
                    for _ in 0..rows {
                        values.extend_from_slice(item);
                    }
                    items += rows;
                }
                let shape =
                    if self.kind == Kind::BatchItemShape { vec![items, width as i64] } else { vec![items * width as i64] };
                (values, shape)
            }
        };
        match self.datatype {
            DataType::Fp32 => {
                let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
                Tensor::from_slice(self.targets[0].clone(), shape, &values)
            }
            _ => {
                let values: Vec<i32> = values.into_iter().map(|v| i32::try_from(v).unwrap_or(i32::MAX)).collect();
                Tensor::from_slice(self.targets[0].clone(), shape, &values)
            }
        }
    }
}

/// One request's ragged input after another, as `[total elements]`.
fn concatenate(parts: Vec<Tensor>) -> Tensor {
    let elements: i64 = parts.iter().map(|t| t.shape.iter().product::<i64>()).sum();
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else { return Tensor::new("", DataType::Fp32, vec![0], Default::default()) };
    let rest: Vec<Tensor> = parts.collect();
    let data = if rest.is_empty() {
        first.data
    } else {
        let mut data = bytes::BytesMut::with_capacity(first.data.len() + rest.iter().map(|t| t.data.len()).sum::<usize>());
        data.extend_from_slice(&first.data);
        rest.iter().for_each(|t| data.extend_from_slice(&t.data));
        data.freeze()
    };
    Tensor::new(first.name, first.datatype, vec![elements], data)
}

#[cfg(test)]
#[path = "ragged_tests.rs"]
mod tests;
