//! The worker plane's conversions: in-process requests, responses and generation events to the
//! `tritium.worker.v1` / `inference` messages and back, and gRPC codes back to [`ErrorCode`].
//!
//! Tensors always travel raw, so no typed contents or shared memory are handled here: the
//! worker decodes with the frontend's own `grpc::convert::decode_request`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tritium_backend_api::llm::{
    Constraint, FinishReason, GenerateEvent, GenerateRequest, GeneratedToken, PrefillSource, PrefixPin, Priority, PromptLogprob,
    SamplingOptions, StopOptions, TransferLayout,
};
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use tritium_proto::inference::model_infer_response::InferOutputTensor;
use tritium_proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse};
use tritium_proto::worker as pb;
use tritium_tensor::{DataType, Tensor};
use tritium_worker::{InferenceRequest, InferenceResponse, ParamValue, WorkerError, parse_version};

fn parameter(value: ParamValue) -> InferParameter {
    let choice = match value {
        ParamValue::Bool(b) => ParameterChoice::BoolParam(b),
        ParamValue::Int64(i) => ParameterChoice::Int64Param(i),
        ParamValue::String(s) => ParameterChoice::StringParam(s),
        ParamValue::Double(d) => ParameterChoice::DoubleParam(d),
        ParamValue::Uint64(u) => ParameterChoice::Uint64Param(u),
    };
    InferParameter { parameter_choice: Some(choice) }
}

/// A request as the worker receives it: every input raw, in order.
pub fn request_to_proto(request: InferenceRequest) -> ModelInferRequest {
    let mut inputs = Vec::with_capacity(request.inputs.len());
    let mut raw = Vec::with_capacity(request.inputs.len());
    for tensor in request.inputs {
        inputs.push(InferInputTensor {
            name: tensor.name,
            datatype: tensor.datatype.kserve_name().to_string(),
            shape: tensor.shape,
            parameters: HashMap::new(),
            contents: None,
        });
        raw.push(tensor.data);
    }
    ModelInferRequest {
        model_name: request.model_name,
        model_version: request.model_version.map(|v| v.to_string()).unwrap_or_default(),
        id: request.id,
        parameters: request.parameters.into_iter().map(|(key, value)| (key, parameter(value))).collect(),
        inputs,
        outputs: request
            .requested_outputs
            .into_iter()
            .map(|name| InferRequestedOutputTensor { name, parameters: HashMap::new() })
            .collect(),
        raw_input_contents: raw,
    }
}

/// A worker's response back in process; `Err` names what the worker got wrong.
pub fn response_from_proto(response: ModelInferResponse, is_final: bool) -> Result<InferenceResponse, String> {
    let ModelInferResponse { model_name, model_version, id, outputs, raw_output_contents, .. } = response;
    let model_version = model_version
        .parse::<i64>()
        .map_err(|_| format!("the response of model '{model_name}' has version '{model_version}', not a number"))?;
    let mut raw = raw_output_contents.into_iter();
    let mut tensors = Vec::with_capacity(outputs.len());
    for output in outputs {
        let datatype = DataType::from_kserve(&output.datatype).ok_or_else(|| {
            format!("output '{}' of model '{model_name}' has datatype '{}', not a KServe datatype", output.name, output.datatype)
        })?;
        let data = raw.next().ok_or_else(|| format!("output '{}' of model '{model_name}' has no raw contents", output.name))?;
        tensors.push(Tensor::new(output.name, datatype, output.shape, data));
    }
    Ok(InferenceResponse {
        model_name: Arc::from(model_name),
        model_version,
        id,
        outputs: tensors,
        is_final,
        parameters: Vec::new(),
    })
}

/// A request as a frontend sends it ([`request_to_proto`]: every input raw, in order), back in
/// process on the worker. The worker plane has conversions of its own, narrower than a door's:
/// it takes no typed `contents`, no shared-memory references and no output parameters (the
/// frontend's door resolved all three), and refuses them rather than guess.
pub fn request_from_proto(request: ModelInferRequest, arrived: Instant) -> Result<InferenceRequest, WorkerError> {
    let ModelInferRequest { model_name, model_version, id, parameters, inputs, outputs, raw_input_contents } = request;
    let model = model_name.as_str();
    let invalid = |reason: String| WorkerError::invalid(&id, reason);
    let model_version = parse_version(&model_version)?;
    if inputs.len() != raw_input_contents.len() {
        return Err(invalid(format!(
            "the worker plane takes every input raw: {} inputs and {} raw contents for model '{model}'",
            inputs.len(),
            raw_input_contents.len()
        )));
    }
    let mut tensors = Vec::with_capacity(inputs.len());
    for (input, data) in inputs.into_iter().zip(raw_input_contents) {
        if input.contents.is_some() || !input.parameters.is_empty() {
            return Err(invalid(format!(
                "input '{}' for model '{model}': the worker plane takes raw contents only, with no parameters",
                input.name
            )));
        }
        let datatype = DataType::from_kserve(&input.datatype).ok_or_else(|| {
            invalid(format!(
                "inference input '{}' data-type is '{}', which is not a KServe datatype, for model '{model}'",
                input.name, input.datatype
            ))
        })?;
        tensors.push(Tensor::new(input.name, datatype, input.shape, data));
    }
    let mut requested_outputs = Vec::with_capacity(outputs.len());
    for output in outputs {
        if !output.parameters.is_empty() {
            return Err(invalid(format!(
                "output '{}' for model '{model}': the worker plane takes no output parameters",
                output.name
            )));
        }
        requested_outputs.push(output.name);
    }
    let mut params = Vec::with_capacity(parameters.len());
    for (key, parameter) in parameters {
        let value = match parameter.parameter_choice {
            Some(ParameterChoice::BoolParam(b)) => ParamValue::Bool(b),
            Some(ParameterChoice::Int64Param(i)) => ParamValue::Int64(i),
            Some(ParameterChoice::StringParam(s)) => ParamValue::String(s),
            Some(ParameterChoice::DoubleParam(d)) => ParamValue::Double(d),
            Some(ParameterChoice::Uint64Param(u)) => ParamValue::Uint64(u),
            None => return Err(invalid(format!("parameter '{key}' for model '{model}' has no value"))),
        };
        params.push((key, value));
    }
    Ok(InferenceRequest {
        model_name,
        model_version,
        id,
        inputs: tensors,
        requested_outputs,
        parameters: params,
        arrived,
        trace: None,
    })
}

/// A worker's response as it travels back to the frontend: every output raw, and the response's
/// integer parameters.
pub fn response_to_proto(response: InferenceResponse) -> Result<ModelInferResponse, WorkerError> {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    let mut total: usize = 0;
    for tensor in response.outputs {
        total = total.saturating_add(tensor.data.len());
        outputs.push(InferOutputTensor {
            name: tensor.name,
            datatype: tensor.datatype.kserve_name().to_string(),
            shape: tensor.shape,
            parameters: HashMap::new(),
            contents: None,
        });
        raw.push(tensor.data);
    }
    if total > i32::MAX as usize {
        return Err(WorkerError::invalid(
            &response.id,
            format!("Response has byte size {total} which exceeds gRPC's byte size limit of {} bytes", i32::MAX),
        ));
    }
    Ok(ModelInferResponse {
        model_name: response.model_name.to_string(),
        model_version: response.model_version.to_string(),
        id: response.id,
        parameters: response.parameters.into_iter().map(|(key, value)| (key, parameter(ParamValue::Int64(value)))).collect(),
        outputs,
        raw_output_contents: raw,
    })
}

pub fn generate_request_to_proto(model: &str, request: GenerateRequest) -> pb::GenerateRequest {
    let GenerateRequest { model_version, prompt, sampling, stop, logprobs, constraint, prompt_logprobs, priority, adapter, pin } =
        request;
    pb::GenerateRequest {
        model: model.to_string(),
        version: model_version,
        prompt,
        sampling: Some(pb::Sampling {
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            top_k: u32::try_from(sampling.top_k).unwrap_or(u32::MAX),
            seed: sampling.seed,
            presence_penalty: sampling.presence_penalty,
            frequency_penalty: sampling.frequency_penalty,
            repetition_penalty: sampling.repetition_penalty,
            min_p: sampling.min_p,
            logit_bias: sampling.logit_bias.iter().map(|&(token, bias)| pb::TokenBias { token, bias }).collect(),
        }),
        stop: Some(pb::Stop {
            max_tokens: stop.max_tokens,
            stop_token_ids: stop.stop_token_ids,
            ignore_eos: stop.ignore_eos,
            min_tokens: stop.min_tokens,
        }),
        logprobs,
        constraint: constraint.map(constraint_to_proto),
        prefill: None,
        prompt_logprobs,
        priority: priority.level,
        priority_tier: priority.tier,
        adapter,
        pin_tokens: pin.map(|pin| pin.tokens),
        pin_ttl_ms: pin.map_or(0, |pin| u32::try_from(pin.ttl.as_millis()).unwrap_or(u32::MAX)),
    }
}

pub fn prefill_source_to_proto(source: PrefillSource) -> pb::PrefillSource {
    pb::PrefillSource { worker_id: source.worker_id, uri: source.uri, first_block: source.first_block }
}

pub fn layout_to_proto(layout: &TransferLayout) -> pb::KvLayout {
    pb::KvLayout {
        model: layout.model.clone(),
        block_size: layout.block_size,
        dtype: layout.dtype.clone(),
        layers: layout.layers,
        kv_heads: layout.kv_heads,
        head_dim: layout.head_dim,
    }
}

pub fn layout_from_proto(layout: pb::KvLayout) -> TransferLayout {
    TransferLayout {
        model: layout.model,
        block_size: layout.block_size,
        dtype: layout.dtype,
        layers: layout.layers,
        kv_heads: layout.kv_heads,
        head_dim: layout.head_dim,
    }
}

fn constraint_to_proto(constraint: Constraint) -> pb::Constraint {
    use pb::constraint::Kind;
    let kind = match constraint {
        Constraint::JsonObject => Kind::JsonObject(true),
        Constraint::JsonSchema(schema) => Kind::JsonSchema(schema),
        Constraint::Regex(regex) => Kind::Regex(regex),
        Constraint::Choice(items) => Kind::Choice(pb::Choices { items }),
        Constraint::Lark(grammar) => Kind::Lark(grammar),
    };
    pb::Constraint { kind: Some(kind) }
}

fn constraint_from_proto(constraint: pb::Constraint) -> Option<Constraint> {
    use pb::constraint::Kind;
    Some(match constraint.kind? {
        Kind::JsonObject(_) => Constraint::JsonObject,
        Kind::JsonSchema(schema) => Constraint::JsonSchema(schema),
        Kind::Regex(regex) => Constraint::Regex(regex),
        Kind::Choice(choices) => Constraint::Choice(choices.items),
        Kind::Lark(grammar) => Constraint::Lark(grammar),
    })
}

/// The most `logit_bias` entries a worker takes: more than any vocabulary has.
const MAX_LOGIT_BIAS: usize = 1 << 20;

/// The engine's request; absent sampling or stop options mean the engine's defaults.
pub fn generate_request_from_proto(request: pb::GenerateRequest) -> GenerateRequest {
    let sampling = request.sampling.map_or_else(SamplingOptions::default, |s| SamplingOptions {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k as usize,
        seed: s.seed,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        repetition_penalty: s.repetition_penalty,
        min_p: s.min_p,
        // What a frontend checked; a worker keeps at most a vocabulary's worth whatever it is sent
        // (the sampler passes over ids outside the model's vocabulary).
        logit_bias: s.logit_bias.iter().take(MAX_LOGIT_BIAS).map(|b| (b.token, b.bias.clamp(-100.0, 100.0))).collect(),
    });
    let stop = request.stop.map_or_else(StopOptions::default, |s| StopOptions {
        max_tokens: s.max_tokens,
        stop_token_ids: s.stop_token_ids,
        ignore_eos: s.ignore_eos,
        min_tokens: s.min_tokens,
    });
    GenerateRequest {
        model_version: request.version,
        prompt: request.prompt,
        sampling,
        stop,
        logprobs: request.logprobs,
        constraint: request.constraint.and_then(constraint_from_proto),
        prompt_logprobs: request.prompt_logprobs,
        priority: Priority { tier: request.priority_tier, level: request.priority },
        adapter: request.adapter,
        pin: request.pin_tokens.map(|tokens| PrefixPin { tokens, ttl: Duration::from_millis(u64::from(request.pin_ttl_ms)) }),
    }
}

pub fn event_to_proto(event: GenerateEvent) -> pb::GenerateEvent {
    let event = match event {
        GenerateEvent::Token(token) => pb::generate_event::Event::Token(pb::Token {
            id: token.id,
            logprob: token.logprob,
            top_logprobs: token.top_logprobs.into_iter().map(|(id, logprob)| pb::TopLogprob { id, logprob }).collect(),
            prompt_cached: token.prompt_cached,
            prompt_pinned: token.prompt_pinned,
            rank: None,
            stop: token.stop,
        }),
        GenerateEvent::PromptLogprobs(scores) => pb::generate_event::Event::PromptLogprobs(pb::PromptLogprobs {
            positions: scores
                .into_iter()
                .map(|score| pb::Token {
                    id: 0,
                    logprob: Some(score.logprob),
                    top_logprobs: score.top_logprobs.into_iter().map(|(id, logprob)| pb::TopLogprob { id, logprob }).collect(),
                    prompt_cached: None,
                    prompt_pinned: None,
                    rank: Some(score.rank),
                    stop: false,
                })
                .collect(),
        }),
        GenerateEvent::Finished { reason, prompt_tokens, completion_tokens, cached_tokens, queued_for } => {
            pb::generate_event::Event::Finished(pb::Finished {
                reason: reason.as_str().to_string(),
                prompt_tokens,
                completion_tokens,
                cached_tokens,
                queued_us: u64::try_from(queued_for.as_micros()).unwrap_or(u64::MAX),
            })
        }
    };
    pb::GenerateEvent { event: Some(event) }
}

/// An event back in process; `Err` names what the worker got wrong.
pub fn event_from_proto(event: pb::GenerateEvent) -> Result<GenerateEvent, String> {
    match event.event {
        Some(pb::generate_event::Event::Token(token)) => Ok(GenerateEvent::Token(GeneratedToken {
            id: token.id,
            logprob: token.logprob,
            top_logprobs: token.top_logprobs.into_iter().map(|t| (t.id, t.logprob)).collect(),
            prompt_cached: token.prompt_cached,
            prompt_pinned: token.prompt_pinned,
            stop: token.stop,
        })),
        Some(pb::generate_event::Event::PromptLogprobs(scores)) => Ok(GenerateEvent::PromptLogprobs(
            scores
                .positions
                .into_iter()
                .map(|score| PromptLogprob {
                    logprob: score.logprob.unwrap_or(f32::NEG_INFINITY),
                    rank: score.rank.unwrap_or(u32::MAX),
                    top_logprobs: score.top_logprobs.into_iter().map(|t| (t.id, t.logprob)).collect(),
                })
                .collect(),
        )),
        Some(pb::generate_event::Event::Finished(finished)) => {
            let reason = match finished.reason.as_str() {
                "stop" => FinishReason::Stop,
                "length" => FinishReason::Length,
                "cancelled" => FinishReason::Cancelled,
                other => return Err(format!("unknown finish reason '{other}'")),
            };
            Ok(GenerateEvent::Finished {
                reason,
                prompt_tokens: finished.prompt_tokens,
                completion_tokens: finished.completion_tokens,
                // A worker cannot have cached more of the prompt than there is.
                cached_tokens: finished.cached_tokens.min(finished.prompt_tokens),
                queued_for: Duration::from_micros(finished.queued_us),
            })
        }
        None => Err("a generation event with neither a token nor the end".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_requests_and_events_round_trip() {
        let request = GenerateRequest {
            prompt: vec![1, 2, 3],
            sampling: SamplingOptions { temperature: 0.5, top_k: 7, seed: Some(9), ..Default::default() },
            stop: StopOptions { max_tokens: Some(4), stop_token_ids: vec![2], ignore_eos: true, min_tokens: 1 },
            logprobs: Some(2),
            model_version: Some(3),
            constraint: Some(Constraint::Choice(vec!["yes".into(), "no".into()])),
            prompt_logprobs: Some(1),
            priority: Priority { tier: 2, level: -7 },
            adapter: Some("sql".into()),
            pin: Some(PrefixPin { tokens: 64, ttl: Duration::from_secs(300) }),
        };
        let wire = generate_request_to_proto("m", request.clone());
        assert_eq!((wire.model.as_str(), wire.version), ("m", Some(3)));
        assert_eq!(generate_request_from_proto(wire), request);

        let events = [
            GenerateEvent::PromptLogprobs(vec![PromptLogprob { logprob: -2.5, rank: 3, top_logprobs: vec![(7, -0.25)] }]),
            GenerateEvent::Token(GeneratedToken {
                id: 5,
                logprob: Some(-0.5),
                top_logprobs: vec![(5, -0.5), (6, -1.5)],
                prompt_cached: Some(2),
                prompt_pinned: Some(1),
                stop: false,
            }),
            GenerateEvent::Finished {
                reason: FinishReason::Length,
                prompt_tokens: 3,
                completion_tokens: 1,
                cached_tokens: 2,
                queued_for: Duration::from_micros(42),
            },
        ];
        for event in events {
            assert_eq!(event_from_proto(event_to_proto(event.clone())), Ok(event));
        }
        assert!(event_from_proto(pb::GenerateEvent { event: None }).is_err());
    }
}
