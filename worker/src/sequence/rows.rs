//! One batch of the sequence batcher: each row's inputs with its control inputs and state
//! filled in, one backend call, and each row's outputs and next state taken back apart.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tritium_proto::ErrorCode;
use tritium_tensor::{DataType, Tensor, bytes_codec};

use super::settings::{RowFlags, SequenceSettings};
use crate::backend::{Backend, BackendError, BackendRequest, Responder};
use crate::batch_tensors::{compatible, split, stack};
use crate::dynamic_batcher::{BatchAnswer, BatchShare, Execution};
use crate::params::SequenceId;
use crate::request::Parameters;

/// A request taken from its sequence's queue.
pub(super) struct Request {
    pub(super) start: bool,
    pub(super) end: bool,
    pub(super) inputs: Vec<Tensor>,
    pub(super) parameters: Parameters,
    pub(super) waited: Duration,
    pub(super) reply: oneshot::Sender<BatchAnswer>,
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

/// What a batch leaves for the scheduler: per sequence, its next state (`None` keeps the one it
/// had: the batch failed) and whether its END request ran.
pub(super) struct Finished {
    pub(super) instance: usize,
    pub(super) sequences: Vec<(SequenceId, Option<Vec<Tensor>>, bool)>,
}

/// Whether two requests' inputs can be rows of one batch (taken in name order: clients list
/// inputs in any order).
pub(super) fn shareable(a: &[Tensor], b: &[Tensor]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            b.iter()
                .find(|y| y.name == x.name)
                .is_some_and(|y| compatible(std::slice::from_ref(x), std::slice::from_ref(y), |_| false))
        })
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
    /// Runs the batch, answers every request, and says what became of each sequence.
    pub(super) async fn execute(mut self, settings: &SequenceSettings, backend: &dyn Backend) -> Finished {
        let started = Instant::now();
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
        let rows = vec![1i64; self.rows.len()];
        let outputs = match failure {
            Some(error) => Err(error),
            None => {
                let parameters = self.rows.iter().rev().find_map(|row| match row {
                    Row::Request { pending, .. } => Some(pending.parameters.clone()),
                    Row::Empty => None,
                });
                let request = BackendRequest {
                    inputs: stack(inputs),
                    parameters: parameters.unwrap_or_default(),
                    cancel: None,
                    id: String::new(),
                    requested_outputs: Vec::new(),
                };
                run(backend, request, &rows, settings.batched).await
            }
        };
        let inferred = Instant::now();
        let execution = Execution {
            batch_size: rows.len() as u64,
            compute_input: Duration::ZERO,
            compute_infer: inferred - started,
            compute_output: Duration::ZERO,
        };
        self.answer(settings, outputs, execution)
    }

    fn answer(
        self,
        settings: &SequenceSettings,
        outputs: Result<Vec<Vec<Tensor>>, BackendError>,
        execution: Execution,
    ) -> Finished {
        let mut sequences = Vec::with_capacity(self.rows.len());
        let mut execution = Some(execution);
        let mut parts = match &outputs {
            Ok(_) => None,
            Err(error) => Some((error.code(), error.to_string())),
        };
        let mut outputs = outputs.ok().map(Vec::into_iter);
        for row in self.rows {
            let part = outputs.as_mut().and_then(Iterator::next);
            let Row::Request { id, state, pending } = row else { continue };
            match (part, &mut parts) {
                (Some(mut outputs), _) => {
                    let next = settings
                        .states
                        .iter()
                        .zip(state)
                        .map(|(spec, previous)| match outputs.iter().position(|o| o.name == spec.output_name) {
                            Some(index) => {
                                let mut next = outputs.remove(index);
                                next.name.clone_from(&spec.input_name);
                                next
                            }
                            None => previous,
                        })
                        .collect();
                    sequences.push((id, Some(next), pending.end));
                    let share = BatchShare { outputs, execution: execution.take(), waited: pending.waited };
                    let _ = pending.reply.send(Ok(share));
                }
                (None, failed) => {
                    let (code, message) = failed.clone().unwrap_or((ErrorCode::Internal, "the batch has no output".to_string()));
                    sequences.push((id, None, pending.end));
                    let _ = pending.reply.send(Err(BackendError::failed(code, message)));
                }
            }
        }
        Finished { instance: self.instance, sequences }
    }
}

/// One backend call for the batch; the outputs of each row.
async fn run(
    backend: &dyn Backend,
    request: BackendRequest,
    rows: &[i64],
    batched: bool,
) -> Result<Vec<Vec<Tensor>>, BackendError> {
    let mut responder = Responder::single();
    backend.execute(request, &mut responder).await?;
    let outputs = responder.take_single().ok_or(BackendError::NoResponse)?;
    if rows.len() == 1 || !batched {
        return Ok(vec![outputs]);
    }
    split(outputs, rows).map_err(|message| BackendError::failed(ErrorCode::Internal, message))
}
