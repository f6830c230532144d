//! One batch of the sequence batcher: each row's inputs with its control inputs and state
//! filled in, one backend call, and each row's outputs and next state taken back apart.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc::{self, UnboundedSender as Sender};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tritium_proto::ErrorCode;
use tritium_tensor::{DataType, Tensor, bytes_codec};

use super::settings::{RowFlags, SequenceSettings};
use crate::params::SequenceId;
use crate::reply::{BatchShare, Execution, Reply};
use tritium_backend_api::request::Parameters;
use tritium_backend_api::{Backend, BackendError, BackendRequest, Responder, StreamTarget, StreamedRequest};

/// One row's outputs, or its error.
type RowOutputs = Result<Vec<Tensor>, BackendError>;

/// A request taken from its sequence's queue.
pub(super) struct Request {
    pub(super) start: bool,
    pub(super) end: bool,
    pub(super) inputs: Vec<Tensor>,
    pub(super) parameters: Parameters,
    /// The client's request id.
    pub(super) id: String,
    pub(super) requested_outputs: Vec<String>,
    pub(super) cancel: Option<CancellationToken>,
    pub(super) waited: Duration,
    pub(super) reply: Reply,
}

pub(super) enum Row {
    Request {
        id: SequenceId,
        state: Vec<Tensor>,
        pending: Request,
    },
    /// A `direct` slot without work in this batch: not READY, inputs of zeros.
    Empty,
}

pub(super) struct Batch {
    pub(super) instance: usize,
    pub(super) rows: Vec<Row>,
}

/// What a batch leaves for the scheduler: the instance it ran on, once free, and per sequence
/// whose request has ended, its next state (`None` keeps the one it had: the request failed) and
/// whether its END request ran. A decoupled model's batch sends the instance first and each
/// sequence as its stream ends.
pub(super) struct Finished {
    pub(super) instance: Option<usize>,
    pub(super) sequences: Vec<(SequenceId, Option<Vec<Tensor>>, bool)>,
}

fn sorted(mut inputs: Vec<Tensor>) -> Vec<Tensor> {
    inputs.sort_by(|x, y| x.name.cmp(&y.name));
    inputs
}

/// A tensor like `template` (one row) with every element zero or empty.
fn zeroed(template: &Tensor) -> Tensor {
    let data = match template.datatype {
        DataType::Bytes => {
            let count = template.shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).product::<usize>();
            bytes_codec::encode((0..count).map(|_| b""))
        }
        _ => Bytes::from(vec![0u8; template.data.len()]),
    };
    Tensor::new(template.name.clone(), template.datatype, template.shape.clone(), data)
}

impl Batch {
    /// Runs the batch, answers every request, and tells the scheduler what became of the
    /// instance and of each sequence.
    pub(super) async fn execute(mut self, settings: &SequenceSettings, backend: &dyn Backend, finished: &Sender<Finished>) {
        let started = Instant::now();
        let (inputs, failure) = self.row_inputs(settings);
        if settings.decoupled {
            return self.stream(settings, backend, inputs, failure, started, finished).await;
        }
        let outputs = match failure {
            Some(error) => Err(error),
            None if backend.takes_request_lists() => Ok(self.run_list(settings, backend, inputs).await),
            None => self.run_stacked(settings, backend, inputs).await,
        };
        let execution = Execution {
            batch_size: self.rows.len() as u64,
            compute_input: Duration::ZERO,
            compute_infer: started.elapsed(),
            compute_output: Duration::ZERO,
        };
        let _ = finished.send(self.answer(settings, outputs, execution));
    }

    /// Every row's inputs with its control inputs and state; an error when a control input
    /// cannot be made.
    fn row_inputs(&mut self, settings: &SequenceSettings) -> (Vec<Vec<Tensor>>, Option<BackendError>) {
        let has_empty_rows = self.rows.iter().any(|row| matches!(row, Row::Empty));
        let template: Option<Vec<Tensor>> = self.rows.iter().filter(|_| has_empty_rows).find_map(|row| match row {
            Row::Request { pending, .. } => Some(sorted(pending.inputs.clone())),
            Row::Empty => None,
        });
        let mut inputs = Vec::with_capacity(self.rows.len());
        let mut failure = None;
        for row in &mut self.rows {
            let (mut row_inputs, flags, id, state) = match row {
                Row::Request { id, state, pending } => {
                    let flags = RowFlags { start: pending.start, end: pending.end, ready: true };
                    (sorted(std::mem::take(&mut pending.inputs)), flags, Some(&*id), state.clone())
                }
                Row::Empty => {
                    let zeros = template.iter().flatten().map(zeroed).collect();
                    (zeros, RowFlags::default(), None, settings.initial_states())
                }
            };
            match settings.control_tensors(flags, id) {
                Ok(controls) => row_inputs.extend(controls),
                Err(message) => failure = Some(BackendError::failed(ErrorCode::InvalidArg, message)),
            }
            row_inputs.extend(state);
            inputs.push(row_inputs);
        }
        (inputs, failure)
    }

    /// The parameters the batch's backend request carries: the last request's.
    fn parameters(&self) -> Parameters {
        let last = self.rows.iter().rev().find_map(|row| match row {
            Row::Request { pending, .. } => Some(pending.parameters.clone()),
            Row::Empty => None,
        });
        last.unwrap_or_default()
    }

    /// One backend call for the rows stacked along the batch dimension; the outputs of each row.
    /// Ragged inputs are laid out as the model's [`crate::ragged::RaggedBatching`] says.
    async fn run_stacked(
        &self,
        settings: &SequenceSettings,
        backend: &dyn Backend,
        inputs: Vec<Vec<Tensor>>,
    ) -> Result<Vec<RowOutputs>, BackendError> {
        let rows = vec![1i64; inputs.len()];
        let ragged = &settings.ragged;
        let scatter = ragged.scatter(&inputs);
        let inputs = ragged.assemble(inputs).map_err(|message| BackendError::failed(ErrorCode::InvalidArg, message))?;
        let request = BackendRequest {
            inputs,
            parameters: self.parameters(),
            cancel: None,
            id: String::new(),
            requested_outputs: Vec::new(),
            trace: None,
        };
        let mut responder = Responder::single();
        backend.execute(request, &mut responder).await?;
        let outputs = responder.take_single().ok_or(BackendError::NoResponse)?;
        if !settings.batched {
            return Ok(vec![Ok(outputs)]);
        }
        let parts =
            ragged.split(outputs, &rows, &scatter).map_err(|message| BackendError::failed(ErrorCode::Internal, message))?;
        Ok(parts.into_iter().map(Ok).collect())
    }

    /// The rows as a list of requests (Triton's python backend: one request per row, not-READY
    /// rows included), each answered on its own.
    async fn run_list(
        &mut self,
        settings: &SequenceSettings,
        backend: &dyn Backend,
        inputs: Vec<Vec<Tensor>>,
    ) -> Vec<RowOutputs> {
        let requests = self.rows.iter_mut().zip(inputs).map(|(row, inputs)| row.backend_request(settings, inputs)).collect();
        backend.execute_list(requests).await
    }

    /// Runs the rows of a decoupled model, each streaming to its own client: the instance is
    /// free once the model has taken the batch, and each sequence's next request may run once
    /// its stream has ended, with the state its responses carried.
    async fn stream(
        self,
        settings: &SequenceSettings,
        backend: &dyn Backend,
        inputs: Vec<Vec<Tensor>>,
        failure: Option<BackendError>,
        started: Instant,
        finished: &Sender<Finished>,
    ) {
        let batch_size = self.rows.len() as u64;
        let state_outputs: Vec<String> = settings.states.iter().map(|s| s.output_name.clone()).collect();
        let mut requests = Vec::with_capacity(self.rows.len());
        let mut starts = Vec::with_capacity(self.rows.len());
        let mut ends = FuturesUnordered::new();
        for (mut row, inputs) in self.rows.into_iter().zip(inputs) {
            let request = row.backend_request(settings, inputs);
            let (id, state, pending) = match row {
                Row::Empty => {
                    requests.push(null_stream(settings, request));
                    continue;
                }
                Row::Request { id, state, pending } => (id, state, pending),
            };
            let stream = match (pending.reply, &failure) {
                (Reply::Stream(stream), None) => stream,
                (reply, failed) => {
                    let error = match failed {
                        Some(error) => BackendError::failed(error.code(), error.to_string()),
                        None => BackendError::failed(ErrorCode::Internal, "a plain request to a decoupled model"),
                    };
                    reply.refuse(error);
                    let _ = finished.send(Finished { instance: None, sequences: vec![(id, None, pending.end)] });
                    continue;
                }
            };
            let mut responder = stream.responder;
            responder.capture_states(state_outputs.clone());
            let (done, ended) = oneshot::channel();
            starts.push((stream.started, pending.waited));
            requests.push(StreamedRequest { request, responder, done });
            let (end, client) = (pending.end, stream.done);
            ends.push(async move { (id, state, end, client, ended.await) });
        }
        if !requests.is_empty() {
            backend.execute_streams(requests).await;
        }
        let execution = Execution {
            batch_size,
            compute_input: Duration::ZERO,
            compute_infer: started.elapsed(),
            compute_output: Duration::ZERO,
        };
        for (index, (start, waited)) in starts.into_iter().enumerate() {
            let _ = start.send(((index == 0).then_some(execution), waited));
        }
        let _ = finished.send(Finished { instance: Some(self.instance), sequences: Vec::new() });
        while let Some((id, state, end, client, ended)) = ends.next().await {
            let Ok((mut responder, result)) = ended else {
                let _ = finished.send(Finished { instance: None, sequences: vec![(id, None, end)] });
                continue;
            };
            let captured = responder.take_states();
            let next = result.is_ok().then(|| next_states(settings, state, captured));
            let _ = finished.send(Finished { instance: None, sequences: vec![(id, next, end)] });
            let _ = client.send((responder, result));
        }
    }

    fn answer(
        self,
        settings: &SequenceSettings,
        outputs: Result<Vec<RowOutputs>, BackendError>,
        execution: Execution,
    ) -> Finished {
        let mut sequences = Vec::with_capacity(self.rows.len());
        let mut execution = Some(execution);
        let failed = match &outputs {
            Ok(_) => None,
            Err(error) => Some((error.code(), error.to_string())),
        };
        let mut outputs = outputs.ok().map(Vec::into_iter);
        for row in self.rows {
            let part = outputs.as_mut().and_then(Iterator::next);
            let Row::Request { id, state, pending } = row else { continue };
            let reply = match pending.reply {
                Reply::Share(reply) => reply,
                stream @ Reply::Stream(_) => {
                    stream.refuse(BackendError::failed(ErrorCode::Internal, "a decoupled request to a plain model"));
                    continue;
                }
            };
            let answer = match part {
                Some(Ok(mut outputs)) => {
                    let captured = settings.states.iter().map(|spec| take_output(&mut outputs, &spec.output_name)).collect();
                    sequences.push((id, Some(next_states(settings, state, captured)), pending.end));
                    Ok(BatchShare { outputs: Ok(outputs), execution: execution.take(), waited: pending.waited })
                }
                Some(Err(error)) => {
                    sequences.push((id, None, pending.end));
                    Ok(BatchShare { outputs: Err(error), execution: execution.take(), waited: pending.waited })
                }
                None => {
                    let (code, message) = failed.clone().unwrap_or((ErrorCode::Internal, "the batch has no output".to_string()));
                    sequences.push((id, None, pending.end));
                    let error = BackendError::failed(code, message);
                    Ok(BatchShare { outputs: Err(error), execution: execution.take(), waited: pending.waited })
                }
            };
            let _ = reply.send(answer);
        }
        Finished { instance: Some(self.instance), sequences }
    }
}

impl Row {
    /// The backend's request for this row, with `inputs` (its own, the controls and the state).
    /// A request that names its outputs asks for the state outputs too.
    fn backend_request(&mut self, settings: &SequenceSettings, inputs: Vec<Tensor>) -> BackendRequest {
        match self {
            Row::Request { pending, .. } => {
                let mut requested_outputs = std::mem::take(&mut pending.requested_outputs);
                if !requested_outputs.is_empty() {
                    requested_outputs.extend(settings.states.iter().map(|s| s.output_name.clone()));
                }
                BackendRequest {
                    inputs,
                    parameters: std::mem::take(&mut pending.parameters),
                    cancel: pending.cancel.take(),
                    id: std::mem::take(&mut pending.id),
                    requested_outputs,
                    trace: None,
                }
            }
            Row::Empty => BackendRequest {
                inputs,
                parameters: Parameters::default(),
                cancel: None,
                id: String::new(),
                requested_outputs: Vec::new(),
                trace: None,
            },
        }
    }
}

/// The output called `name`, taken out of `outputs`.
fn take_output(outputs: &mut Vec<Tensor>, name: &str) -> Option<Tensor> {
    let index = outputs.iter().position(|o| o.name == name)?;
    Some(outputs.remove(index))
}

/// A sequence's next states: each state output the model gave, named as the state's input, or
/// the previous value where it gave none.
fn next_states(settings: &SequenceSettings, previous: Vec<Tensor>, captured: Vec<Option<Tensor>>) -> Vec<Tensor> {
    let mut captured = captured.into_iter();
    settings
        .states
        .iter()
        .zip(previous)
        .map(|(spec, previous)| match captured.next().flatten() {
            Some(mut next) => {
                next.name.clone_from(&spec.input_name);
                next
            }
            None => previous,
        })
        .collect()
}

/// A not-READY row of a decoupled model's `direct` batch: its responses go nowhere.
fn null_stream(settings: &SequenceSettings, request: BackendRequest) -> StreamedRequest {
    let (sender, mut receiver) = mpsc::channel(4);
    tokio::spawn(async move { while receiver.recv().await.is_some() {} });
    let responder = Responder::stream(StreamTarget {
        sender,
        model_name: Arc::from(settings.model.as_str()),
        model_version: 0,
        id: String::new(),
        requested_outputs: Vec::new(),
        finished: false,
        first_response: None,
        output_shapes: None,
    });
    let (done, _) = oneshot::channel();
    StreamedRequest { request, responder, done }
}
