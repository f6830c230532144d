//! Triton's ensembles (`platform: "ensemble"`): a graph of models run as one. An ensemble is a
//! backend like any other; its `execute` runs every step whose input tensors exist, all such
//! steps at once, through the composing models' own schedulers (their batching, their
//! statistics), and passes tensors between steps without copying them. A decoupled step's
//! responses each flow on through the steps after it. A step's error reaches the client as
//! `in ensemble '<name>', <the step's error>`.
//!
//! `max_inflight_requests` (0: no bound) bounds, per step and across all the ensemble's requests,
//! how many of that step's requests are in flight at once (a decoupled step's until its last
//! response), as Triton does: a fast step before a slow one waits instead of piling requests up.

mod graph;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::{BoxFuture, join_all};
use futures::stream::FuturesOrdered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tritium_proto::ErrorCode;
use tritium_proto::inference::ModelConfig;
use tritium_proto::inference::model_config::SchedulingChoice;
use tritium_tensor::Tensor;

pub use crate::model::ENSEMBLE_PLATFORM;
use crate::model::ModelVersion;
pub use graph::composing_models;
use graph::{Graph, Step};
use tritium_backend_api::StreamItem;
use tritium_backend_api::error::WorkerError;
use tritium_backend_api::request::{InferenceRequest, Parameters};
use tritium_backend_api::trace::RequestTrace;
use tritium_backend_api::{Backend, BackendError, BackendRequest, Responder};

/// What an ensemble needs of the server it runs in: the versions of the models it is made of
/// (the model registry implements it).
pub trait Steps: Send + Sync + 'static {
    fn resolve(&self, name: &str, version: Option<i64>) -> Result<Arc<ModelVersion>, WorkerError>;
}

/// Most branches of one decoupled step's responses running at once (beside each step's
/// `max_inflight_requests`): a stream that outpaces the steps after it waits for room.
const MAX_BRANCHES: usize = 256;

/// Where a run's answers go: the client's responder, or, for a branch a decoupled step forked
/// (running beside its siblings), a list given out in order once the branch is done.
enum Sink<'s> {
    Respond(&'s mut Responder),
    Collect(Vec<Vec<Tensor>>),
}

impl Sink<'_> {
    async fn put(&mut self, outputs: Vec<Tensor>) -> Result<(), BackendError> {
        match self {
            Sink::Respond(responder) => responder.send(outputs).await,
            Sink::Collect(answers) => {
                answers.push(outputs);
                Ok(())
            }
        }
    }

    fn collected(self) -> Vec<Vec<Tensor>> {
        match self {
            Sink::Collect(answers) => answers,
            Sink::Respond(_) => Vec::new(),
        }
    }
}

pub struct EnsembleBackend {
    graph: Graph,
    steps: Weak<dyn Steps>,
    /// One bound per step of `graph` (none without `max_inflight_requests`).
    inflight: Vec<Arc<Semaphore>>,
}

impl EnsembleBackend {
    /// Checks `config`'s steps against the models `steps` serves now; `later` is the same,
    /// held while the ensemble runs.
    pub(crate) fn new(config: &ModelConfig, steps: &dyn Steps, later: Weak<dyn Steps>) -> Result<Self, String> {
        let lookup = |name: &str, version: Option<i64>| steps.resolve(name, version).ok();
        let graph = Graph::from_config(config, &lookup)?;
        let max_inflight = match &config.scheduling_choice {
            Some(SchedulingChoice::EnsembleScheduling(ensemble)) => ensemble.max_inflight_requests,
            _ => 0,
        };
        let max_inflight = usize::try_from(max_inflight).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        let inflight = match max_inflight {
            0 => Vec::new(),
            n => graph.steps.iter().map(|_| Arc::new(Semaphore::new(n))).collect(),
        };
        Ok(EnsembleBackend { graph, steps: later, inflight })
    }

    /// A place among the requests in flight at step `index`, held until its last response.
    async fn enter_step(&self, index: usize) -> Option<OwnedSemaphorePermit> {
        // The semaphores are never closed.
        Arc::clone(self.inflight.get(index)?).acquire_owned().await.ok()
    }

    fn step_error(&self, error: WorkerError) -> BackendError {
        BackendError::refused(error.code(), format!("in ensemble '{}', {error}", self.graph.name))
    }

    /// The composing model's request: the step's input tensors under the model's names.
    fn step_request(
        &self,
        step: &Step,
        tensors: &HashMap<String, Tensor>,
        parameters: &Parameters,
        trace: Option<&RequestTrace>,
    ) -> InferenceRequest {
        let inputs = step
            .inputs
            .iter()
            .filter_map(|(model_input, tensor)| {
                let mut input = tensors.get(tensor)?.clone();
                input.name.clone_from(model_input);
                Some(input)
            })
            .collect();
        let mut request = InferenceRequest::new(step.model.clone(), inputs);
        request.model_version = step.version;
        request.requested_outputs = step.outputs.iter().map(|(model_output, _)| model_output.clone()).collect();
        request.parameters = parameters.clone();
        request.trace = trace.map(|parent| parent.child(step.model.clone(), step.version));
        request
    }

    fn resolve(&self, steps: &dyn Steps, step: &Step) -> Result<Arc<ModelVersion>, BackendError> {
        steps.resolve(&step.model, step.version).map_err(|e| self.step_error(e))
    }

    /// Puts a step's outputs into the ensemble's tensors under their ensemble names.
    fn take_outputs(step: &Step, outputs: Vec<Tensor>, tensors: &mut HashMap<String, Tensor>) {
        for mut output in outputs {
            if let Some((_, tensor)) = step.outputs.iter().find(|(model_output, _)| *model_output == output.name) {
                output.name.clone_from(tensor);
                tensors.insert(tensor.clone(), output);
            }
        }
    }

    /// Runs the steps not yet `done` as their inputs appear, then answers with the ensemble's
    /// outputs. A decoupled step forks the rest of the run once per response; the forks run at
    /// once (each step bounded by `max_inflight_requests`, as Triton runs them), their answers
    /// given out in the order of the responses they came from.
    fn flow<'a, 's: 'a>(
        &'a self,
        registry: &'a dyn Steps,
        mut tensors: HashMap<String, Tensor>,
        mut done: Vec<bool>,
        parameters: &'a Parameters,
        trace: Option<&'a RequestTrace>,
        sink: &'a mut Sink<'s>,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            loop {
                let steps = &self.graph.steps;
                let ready: Vec<usize> = (0..steps.len())
                    .filter(|&i| !done[i] && steps[i].inputs.iter().all(|(_, tensor)| tensors.contains_key(tensor)))
                    .collect();
                if ready.is_empty() {
                    break;
                }
                let models = ready.iter().map(|&i| self.resolve(registry, &steps[i])).collect::<Result<Vec<_>, _>>()?;
                if let Some(position) = models.iter().position(|m| m.decoupled()) {
                    let index = ready[position];
                    done[index] = true;
                    let request = self.step_request(&steps[index], &tensors, parameters, trace);
                    let valid = models[position].validate(request).map_err(|e| self.step_error(e))?;
                    let _in_flight = self.enter_step(index).await;
                    let mut stream = match ModelVersion::run_any(valid).await.map_err(|e| self.step_error(e))? {
                        tritium_backend_api::InferOutcome::Stream(stream) => stream,
                        tritium_backend_api::InferOutcome::Single(response) => {
                            Self::take_outputs(&steps[index], response.outputs, &mut tensors);
                            continue;
                        }
                    };
                    let mut branches = FuturesOrdered::new();
                    let mut ended = false;
                    while !ended || !branches.is_empty() {
                        let room = branches.len() < MAX_BRANCHES;
                        tokio::select! {
                            biased;
                            Some(answers) = branches.next(), if !branches.is_empty() => {
                                for outputs in answers? {
                                    sink.put(outputs).await?;
                                }
                            }
                            item = stream.next(), if !ended && room => match item {
                                Some(StreamItem::Response(response)) => {
                                    let mut forked = tensors.clone();
                                    Self::take_outputs(&steps[index], response.outputs, &mut forked);
                                    let done = done.clone();
                                    branches.push_back(async move {
                                        let mut branch = Sink::Collect(Vec::new());
                                        self.flow(registry, forked, done, parameters, trace, &mut branch).await?;
                                        Ok::<_, BackendError>(branch.collected())
                                    });
                                }
                                Some(StreamItem::Complete) | None => ended = true,
                                Some(StreamItem::Error(error)) => return Err(self.step_error(error)),
                            },
                        }
                    }
                    return Ok(());
                }
                let runs = ready.iter().zip(&models).map(|(&i, model)| {
                    let request = self.step_request(&steps[i], &tensors, parameters, trace);
                    async move {
                        let valid = model.validate(request)?;
                        let _in_flight = self.enter_step(i).await;
                        ModelVersion::run_unary(valid).await
                    }
                });
                let results = join_all(runs).await;
                for (&index, result) in ready.iter().zip(results) {
                    done[index] = true;
                    let response = result.map_err(|e| self.step_error(e))?;
                    Self::take_outputs(&steps[index], response.outputs, &mut tensors);
                }
            }
            let outputs: Option<Vec<Tensor>> = self.graph.outputs.iter().map(|name| tensors.remove(name)).collect();
            match outputs {
                Some(outputs) => sink.put(outputs).await,
                // A decoupled step's response without every tensor (an empty final one) ends its
                // branch of the run without an answer.
                None if done.iter().all(|&d| d) => Ok(()),
                None => Err(BackendError::failed(
                    ErrorCode::Internal,
                    format!("in ensemble '{}', a step did not produce every output", self.graph.name),
                )),
            }
        })
    }
}

#[async_trait]
impl Backend for EnsembleBackend {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let registry = self.steps.upgrade().ok_or_else(|| {
            BackendError::failed(
                ErrorCode::Unavailable,
                format!("ensemble '{}': the model repository is closing", self.graph.name),
            )
        })?;
        let tensors: HashMap<String, Tensor> = request.inputs.into_iter().map(|t| (t.name.clone(), t)).collect();
        let done = vec![false; self.graph.steps.len()];
        let mut sink = Sink::Respond(responder);
        self.flow(registry.as_ref(), tensors, done, &request.parameters, request.trace.as_ref(), &mut sink).await
    }
}
