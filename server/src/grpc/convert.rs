//! KServe `ModelInferRequest` -> [`InferenceRequest`] and [`InferenceResponse`] ->
//! `ModelInferResponse`, with Triton's rules: the raw-index counter that skips shared-memory and
//! typed inputs, typed contents turned into the raw layout, shared-memory inputs and outputs, and
//! every output in `raw_output_contents`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::model_infer_request::InferInputTensor;
use tritium_proto::inference::model_infer_response::InferOutputTensor;
use tritium_proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse};
use tritium_tensor::{DataType, Tensor, TensorError, contents, element_count};
use tritium_worker::{InferenceRequest, InferenceResponse, ParamValue, parse_version};

use super::classification::{Classification, classify};
use crate::error::ServerError;
use crate::shm::{RegionGuard, SharedMemoryRegistry};

const SHM_REGION: &str = "shared_memory_region";
const SHM_BYTE_SIZE: &str = "shared_memory_byte_size";
const SHM_OFFSET: &str = "shared_memory_offset";
const CLASSIFICATION: &str = "classification";

/// Where the client wants an output written instead of the response.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRegion {
    pub output: String,
    pub region: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// What answering a request needs beside its response: the shared memory it uses (where its
/// outputs go, and the regions its inputs are views of, checked before answering: a client that
/// shrank one meanwhile gets an error, not zeros), and the outputs it wants classified.
#[derive(Debug, Clone, Default)]
pub struct ShmBindings {
    pub outputs: Vec<OutputRegion>,
    pub inputs: Vec<RegionGuard>,
    pub classifications: Vec<Classification>,
}

/// A decoded request plus what the transport must remember to answer it.
#[derive(Debug)]
pub struct Decoded {
    pub request: InferenceRequest,
    /// The version the request names, when it has been resolved already (by the door, or here
    /// for classification): validation takes it rather than looking it up again.
    pub model: Option<Arc<tritium_worker::ModelVersion>>,
    pub shm: ShmBindings,
    pub enable_empty_final: bool,
}

/// A shared-memory reference in tensor parameters.
struct ShmRef {
    region: String,
    offset: u64,
    byte_size: u64,
}

fn shm_ref(
    id: &str,
    model: &str,
    kind: &str,
    tensor: &str,
    params: &HashMap<String, InferParameter>,
) -> Result<Option<ShmRef>, ServerError> {
    // Nearly every tensor comes without parameters.
    if params.is_empty() {
        return Ok(None);
    }
    let invalid = |reason: String| ServerError::invalid(id, reason);
    let int = |key: &str| -> Result<Option<u64>, ServerError> {
        match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
            None => Ok(None),
            Some(ParameterChoice::Int64Param(v)) => u64::try_from(*v)
                .map(Some)
                .map_err(|_| invalid(format!("'{key}' of {kind} '{tensor}' for model '{model}' must not be negative, got {v}"))),
            Some(ParameterChoice::Uint64Param(v)) => Ok(Some(*v)),
            Some(_) => Err(invalid(format!("'{key}' of {kind} '{tensor}' for model '{model}' must be an int64_param"))),
        }
    };
    let region = match params.get(SHM_REGION).and_then(|p| p.parameter_choice.as_ref()) {
        None => None,
        Some(ParameterChoice::StringParam(s)) => Some(s.clone()),
        Some(_) => {
            return Err(invalid(format!("'{SHM_REGION}' of {kind} '{tensor}' for model '{model}' must be a string_param")));
        }
    };
    let byte_size = int(SHM_BYTE_SIZE)?;
    let offset = int(SHM_OFFSET)?;
    match (region, byte_size) {
        (Some(region), Some(byte_size)) => Ok(Some(ShmRef { region, offset: offset.unwrap_or(0), byte_size })),
        (Some(_), None) => {
            Err(invalid(format!("'{SHM_BYTE_SIZE}' is required with '{SHM_REGION}' for {kind} '{tensor}' for model '{model}'")))
        }
        (None, Some(_)) => {
            Err(invalid(format!("'{SHM_BYTE_SIZE}' given without '{SHM_REGION}' for {kind} '{tensor}' for model '{model}'")))
        }
        (None, None) if offset.is_some() => {
            Err(invalid(format!("'{SHM_OFFSET}' given without '{SHM_REGION}' for {kind} '{tensor}' for model '{model}'")))
        }
        (None, None) => Ok(None),
    }
}

fn param_value(choice: &ParameterChoice) -> ParamValue {
    match choice {
        ParameterChoice::BoolParam(b) => ParamValue::Bool(*b),
        ParameterChoice::Int64Param(i) => ParamValue::Int64(*i),
        ParameterChoice::StringParam(s) => ParamValue::String(s.clone()),
        ParameterChoice::DoubleParam(d) => ParamValue::Double(*d),
        ParameterChoice::Uint64Param(u) => ParamValue::Uint64(*u),
    }
}

fn typed_reason(model: &str, input: &InferInputTensor, datatype: DataType, err: &TensorError) -> String {
    match err {
        TensorError::UnexpectedTypedField { field, .. } => format!(
            "unexpected explicit tensor data for input tensor '{}' for model '{model}' of type '{field}', expected datatype '{datatype}'",
            input.name
        ),
        TensorError::NoTypedField { .. } => format!(
            "input tensor '{}' for model '{model}' of datatype '{datatype}' can only be sent in raw_input_contents",
            input.name
        ),
        other => format!("input '{}' for model '{model}': {other}", input.name),
    }
}

/// Decodes a request, resolving every input to one payload without copying raw data.
pub fn decode_request(request: ModelInferRequest, shm: &SharedMemoryRegistry, arrived: Instant) -> Result<Decoded, ServerError> {
    let ModelInferRequest { model_name, model_version, id, parameters, inputs, outputs, mut raw_input_contents } = request;
    let model = model_name.as_str();
    let invalid = |reason: String| ServerError::invalid(&id, reason);
    let version = parse_version(&model_version)?;

    let mut raw_index = 0;
    let mut input_regions = Vec::new();
    let mut tensors = Vec::with_capacity(inputs.len());
    for input in inputs {
        let datatype = DataType::from_kserve(&input.datatype).ok_or_else(|| {
            invalid(format!(
                "inference input '{}' data-type is '{}', which is not a KServe datatype, for model '{model}'",
                input.name, input.datatype
            ))
        })?;
        let typed = input.contents.as_ref().filter(|c| contents::has_typed_data(c));
        let data = if let Some(shm_ref) = shm_ref(&id, model, "input", &input.name, &input.parameters)? {
            if typed.is_some() {
                return Err(invalid(format!(
                    "unexpected 'content' provided when using shared memory for input '{}' for model '{model}'",
                    input.name
                )));
            }
            let (view, guard) = shm.read_guarded(&shm_ref.region, shm_ref.offset, shm_ref.byte_size)?;
            input_regions.push(guard);
            view
        } else if let Some(typed) = typed {
            if !raw_input_contents.is_empty() {
                return Err(invalid(format!(
                    "contents field must not be specified when using raw_input_contents for '{}' for model '{model}'",
                    input.name
                )));
            }
            contents::typed_to_raw(datatype, typed).map_err(|e| invalid(typed_reason(model, &input, datatype, &e)))?
        } else if let Some(raw) = raw_input_contents.get_mut(raw_index) {
            raw_index += 1;
            std::mem::take(raw)
        } else if matches!(element_count(&input.shape), Ok(0)) {
            bytes::Bytes::new()
        } else {
            return Err(invalid(format!(
                "unable to find data for input tensor '{}' for model '{model}' in request.",
                input.name
            )));
        };
        tensors.push(Tensor::new(input.name, datatype, input.shape, data));
    }

    let mut requested_outputs = Vec::with_capacity(outputs.len());
    let mut output_regions = Vec::new();
    let mut classifications = Vec::new();
    for output in outputs {
        let classification = output.parameters.contains_key(CLASSIFICATION);
        if let Some(shm_ref) = shm_ref(&id, model, "output", &output.name, &output.parameters)? {
            if classification {
                return Err(invalid(format!(
                    "output can't set both 'shared_memory_region' and 'classification' for output '{}' for model '{model}'",
                    output.name
                )));
            }
            output_regions.push(OutputRegion {
                output: output.name.clone(),
                region: shm_ref.region,
                offset: shm_ref.offset,
                byte_size: shm_ref.byte_size,
            });
        } else if classification {
            let count = match output.parameters.get(CLASSIFICATION).and_then(|p| p.parameter_choice.as_ref()) {
                Some(ParameterChoice::Int64Param(n)) if *n > 0 => *n as usize,
                Some(ParameterChoice::Uint64Param(n)) if *n > 0 => usize::try_from(*n).unwrap_or(usize::MAX),
                _ => {
                    return Err(invalid(format!(
                        "'{CLASSIFICATION}' of output '{}' for model '{model}' must be a positive int64_param",
                        output.name
                    )));
                }
            };
            classifications.push(Classification { output: output.name.clone(), count, batched: false, labels: None });
        }
        requested_outputs.push(output.name);
    }

    let mut enable_empty_final = false;
    let mut params = Vec::with_capacity(parameters.len());
    for (key, parameter) in parameters {
        // Triton's gRPC door refuses these itself, in its own words (without a request id).
        if key.starts_with("triton_") && key != "triton_enable_empty_final_response" {
            return Err(ServerError::InvalidArgument { reason: GRPC_TRITON_KEYS.into() });
        }
        let Some(choice) = parameter.parameter_choice else {
            return Err(invalid(format!("parameter '{key}' for model '{model}' has no value")));
        };
        let value = param_value(&choice);
        if key == "triton_enable_empty_final_response" {
            enable_empty_final = value == ParamValue::Bool(true);
        }
        params.push((key, value));
    }

    Ok(Decoded {
        model: None,
        request: InferenceRequest {
            model_name,
            model_version: version,
            id,
            inputs: tensors,
            requested_outputs,
            parameters: params,
            arrived,
            trace: None,
        },
        shm: ShmBindings { outputs: output_regions, inputs: input_regions, classifications },
        enable_empty_final,
    })
}

/// Triton 2.51's gRPC answer to a request parameter named `triton_*` (other than the one it takes).
const GRPC_TRITON_KEYS: &str = "parameter keys starting with 'triton_' are reserved for Triton usage. Only the following keys starting with 'triton_' are allowed: triton_enable_empty_final_response";

pub(crate) fn bool_param(value: bool) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(value)) }
}

fn int64_param(value: i64) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(value)) }
}

/// Encodes a response; outputs the client placed in shared memory are written there and answered
/// with their metadata and an empty raw entry, as Triton does.
pub fn encode_response(
    response: InferenceResponse,
    bindings: &ShmBindings,
    shm: &SharedMemoryRegistry,
    final_flag: Option<bool>,
) -> Result<ModelInferResponse, ServerError> {
    for input in &bindings.inputs {
        input.check()?;
    }
    let output_regions = &bindings.outputs;
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    let mut total: usize = 0;
    for tensor in response.outputs {
        let tensor = match bindings.classifications.iter().find(|c| c.output == tensor.name) {
            Some(wanted) => classify(tensor, wanted)?,
            None => tensor,
        };
        let mut parameters = HashMap::new();
        let data = match output_regions.iter().find(|r| r.output == tensor.name) {
            Some(region) => {
                shm.write(&region.region, region.offset, region.byte_size, &[&tensor.data]).map_err(|e| match e {
                    crate::shm::ShmError::OutputTooSmall { .. } => ServerError::Internal(e.message_for_output(&tensor.name)),
                    other => ServerError::Shm(other),
                })?;
                parameters.insert(
                    SHM_REGION.to_string(),
                    InferParameter { parameter_choice: Some(ParameterChoice::StringParam(region.region.clone())) },
                );
                parameters.insert(
                    SHM_BYTE_SIZE.to_string(),
                    InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(tensor.data.len() as i64)) },
                );
                bytes::Bytes::new()
            }
            None => tensor.data,
        };
        total = total.saturating_add(data.len());
        outputs.push(InferOutputTensor {
            name: tensor.name,
            datatype: tensor.datatype.kserve_name().to_string(),
            shape: tensor.shape,
            parameters,
            contents: None,
        });
        raw.push(data);
    }
    if total > i32::MAX as usize {
        return Err(ServerError::invalid(
            &response.id,
            format!("Response has byte size {total} which exceeds gRPC's byte size limit of {} bytes", i32::MAX),
        ));
    }
    let mut parameters = HashMap::new();
    if let Some(is_final) = final_flag {
        parameters.insert("triton_final_response".to_string(), bool_param(is_final));
    }
    for (key, value) in response.parameters {
        parameters.insert(key, int64_param(value));
    }
    Ok(ModelInferResponse {
        model_name: response.model_name.to_string(),
        model_version: itoa::Buffer::new().format(response.model_version).to_owned(),
        id: response.id,
        parameters,
        outputs,
        raw_output_contents: raw,
    })
}

/// [`decode_request`], with each classified output told whether its model batches (its first
/// dimension is then kept as the batch) and given its labels.
pub fn decode_for_model(
    request: ModelInferRequest,
    shm: &SharedMemoryRegistry,
    repository: &tritium_worker::ModelRepository,
    resolved: Option<Arc<tritium_worker::ModelVersion>>,
    arrived: Instant,
) -> Result<Decoded, ServerError> {
    let mut decoded = decode_request(request, shm, arrived)?;
    decoded.model = resolved;
    if !decoded.shm.classifications.is_empty() {
        let version = match &decoded.model {
            Some(version) => Arc::clone(version),
            None => {
                repository.resolve_served(&decoded.request.model_name, decoded.request.model_version)?
            }
        };
        let batched = version.schema.max_batch_size > 0;
        for wanted in &mut decoded.shm.classifications {
            wanted.batched = batched;
            wanted.labels = version.schema.labels(&wanted.output).cloned();
        }
        decoded.model = Some(version);
    }
    Ok(decoded)
}

/// The empty final response of a stream request (`triton_enable_empty_final_response`).
pub fn empty_final(model_name: &str, id: &str) -> ModelInferResponse {
    ModelInferResponse {
        model_name: model_name.to_string(),
        model_version: String::new(),
        id: id.to_string(),
        parameters: HashMap::from([("triton_final_response".to_string(), bool_param(true))]),
        outputs: Vec::new(),
        raw_output_contents: Vec::new(),
    }
}
