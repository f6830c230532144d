//! The router as a [`WorkerClient`]: every request goes to the worker `pick` chooses. When that
//! worker cannot be reached, a request that had not started there, or a unary tensor request
//! (stateless, so safe to repeat), goes to another one; a language-model stream whose worker dies
//! is continued on another worker from the tokens already generated, up to the migration limit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;
use tritium_backend_api::llm::{GenerateError, GenerateEvent, GenerateRequest, OpenAiApi, OpenAiChunks, OpenAiRequest, TokenStream};
use tritium_worker::{InferOutcome, InferenceResponse, ModelVersion, ParamValue, ValidInferRequest, WorkerClient, WorkerError};

use super::affinity::Preferred;
use super::{Member, Picked, Router, WORKER_ID_PARAMETER};
use tritium_proto::inference::model_config::SchedulingChoice;

/// The worker a request names with the `worker_id` parameter, for `direct` mode.
pub fn hint_of(parameters: &tritium_worker::Parameters) -> Option<String> {
    parameters.iter().find(|(key, _)| key == WORKER_ID_PARAMETER).and_then(|(_, value)| match value {
        ParamValue::String(id) => Some(id.clone()),
        _ => None,
    })
}

/// A request of a stateful model's sequence: the key that keeps every request of the sequence on
/// one worker (its state lives there).
fn sequence_key(request: &ValidInferRequest) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let stateful = matches!(request.model().config.scheduling_choice, Some(SchedulingChoice::SequenceBatching(_)));
    let id = request.options().sequence_id.as_ref().filter(|_| stateful)?;
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    Some(hasher.finish())
}

/// What the router does after a call on a worker failed: one that did not run there (the worker
/// could not be reached, or refused it while draining) may run on another worker; any other
/// failure is the request's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Elsewhere,
    Never,
}

impl Retry {
    fn after(error: &WorkerError) -> Retry {
        match error {
            WorkerError::Unreachable { .. } | WorkerError::NotStarted { .. } => Retry::Elsewhere,
            _ => Retry::Never,
        }
    }
}

/// How a call went on the workers the router tried.
enum Tried<T> {
    /// A worker answered, or failed in a way another worker would not fix.
    Answered(Result<T, WorkerError>),
    /// No worker was left to pick: `last` is the last failure that sent the call elsewhere.
    NoneLeft { last: Option<WorkerError> },
}

impl Router {
    /// The router's one retry loop: `pick` chooses a worker (passing over those in `tried`),
    /// `call` runs on it, and while a failure says the call did not run there, the worker is
    /// marked suspect, counted as a retry, and another one is picked.
    async fn on_workers<T, P, F, Fut>(
        &self,
        model: &str,
        tried: &mut Vec<Arc<str>>,
        mut pick: P,
        mut call: F,
    ) -> Result<Tried<T>, WorkerError>
    where
        P: FnMut(&[Arc<str>]) -> Result<Option<Picked>, WorkerError>,
        F: FnMut(Picked) -> Fut,
        Fut: std::future::Future<Output = Result<T, WorkerError>>,
    {
        let mut last = None;
        loop {
            let Some(picked) = pick(tried)? else { return Ok(Tried::NoneLeft { last }) };
            let member = picked.member.clone();
            match call(picked).await {
                Err(error) if Retry::after(&error) == Retry::Elsewhere => {
                    tracing::warn!(worker = %member.id, model, "{error}; trying another worker");
                    self.mark_suspect(&member);
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    tried.push(Arc::clone(&member.id));
                    last = Some(error);
                }
                answered => return Ok(Tried::Answered(answered)),
            }
        }
    }

    /// Runs `call` on the chosen worker, and again on another one while workers cannot be
    /// reached. With no worker serving the model, it runs on the fallback (in-process) worker.
    async fn with_failover<T, F, Fut>(
        &self,
        model: &str,
        tokens: Option<&[u32]>,
        hint: Option<&str>,
        sticky: Option<u64>,
        mut call: F,
    ) -> Result<T, WorkerError>
    where
        F: FnMut(Arc<dyn WorkerClient>, bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, WorkerError>>,
    {
        let mut tried = Vec::new();
        let pick = |tried: &[Arc<str>]| self.pick(model, tokens, hint, sticky, tried, false);
        let outcome = self
            .on_workers(model, &mut tried, pick, |picked| {
                let member = picked.member;
                let outstanding = member.begin();
                let call = call(Arc::clone(&member.client), member.local);
                async move {
                    let _outstanding = outstanding;
                    call.await
                }
            })
            .await?;
        match outcome {
            Tried::Answered(answered) => answered,
            Tried::NoneLeft { last: Some(error) } => Err(error),
            Tried::NoneLeft { last: None } => call(Arc::clone(&self.fallback), true).await,
        }
    }

    /// Statistics of a remote request, on the version (stand-in) it was validated against.
    fn record_remote(version: &ModelVersion, arrived: Instant, ok: bool) {
        let outcome = if ok { Ok(()) } else { Err(tritium_worker::FailureReason::Other) };
        version.stats.record_request(arrived, arrived, outcome);
    }

    /// Embeds on the worker `hint` names, else on the worker the policy picks.
    pub async fn embed_on(&self, model: &str, hint: Option<&str>, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, WorkerError> {
        self.with_failover(model, inputs.first().map(Vec::as_slice), hint, None, |client, _| {
            let inputs = inputs.clone();
            async move { client.embed(model, inputs).await }
        })
        .await
    }

    /// Starts a generation on the worker `hint` names (the router's `direct` mode, or a request
    /// that names one), else on the worker the policy picks.
    pub async fn generate_on(
        &self,
        model: &str,
        hint: Option<&str>,
        request: GenerateRequest,
    ) -> Result<TokenStream, WorkerError> {
        self.generate_placed(model, hint, None, request).await
    }

    /// Starts a generation of session `session` (an agent's conversation): on the worker the
    /// session is bound to, else where the policy picks, binding the session there
    /// (`--router-session-affinity-*`, see [`super::sessions`]; without it, as [`Self::generate_on`]).
    pub async fn generate_in_session(
        &self,
        model: &str,
        session: &str,
        request: GenerateRequest,
    ) -> Result<TokenStream, WorkerError> {
        let Some((sessions, hold)) = self.hold_session(session).await? else {
            return self.generate_on(model, None, request).await;
        };
        let stream = self.generate_placed(model, None, self.preferred(model, &sessions, &hold), request).await?;
        Ok(match stream.worker().map(Arc::<str>::from) {
            Some(worker) => {
                let lease = sessions.commit(hold, &worker);
                self.share_session(session, &worker);
                stream.holding(lease)
            }
            None => stream,
        })
    }

    /// [`Self::generate_in_session`] for a text-input model's request.
    pub async fn generate_openai_in_session(
        &self,
        model: &str,
        session: &str,
        api: OpenAiApi,
        request: OpenAiRequest,
    ) -> Result<OpenAiChunks, WorkerError> {
        let Some((sessions, hold)) = self.hold_session(session).await? else {
            return self.generate_openai_on(model, None, api, request).await;
        };
        let prefer = self.preferred(model, &sessions, &hold);
        let mut tried = Vec::new();
        let pick = |tried: &[Arc<str>]| self.pick_preferring(model, None, None, prefer, tried);
        let outcome = self
            .on_workers(model, &mut tried, pick, |picked| {
                let member = picked.member;
                let request = request.clone();
                async move {
                    let _outstanding = member.begin();
                    Ok((member.client.generate_openai(model, api, request).await?, member.id))
                }
            })
            .await?;
        match outcome {
            Tried::Answered(Ok((chunks, worker))) => {
                self.share_session(session, &worker);
                Ok(chunks.holding(sessions.commit(hold, &worker)))
            }
            Tried::Answered(Err(error)) | Tried::NoneLeft { last: Some(error) } => Err(error),
            Tried::NoneLeft { last: None } => self.fallback.generate_openai(model, api, request).await,
        }
    }

    /// [`Self::generate_on`], trying the worker `prefer` names first: when it cannot be reached,
    /// the policy picks; when it is busy, too, unless the preference is strict.
    async fn generate_placed(
        &self,
        model: &str,
        hint: Option<&str>,
        prefer: Option<Preferred<'_>>,
        request: GenerateRequest,
    ) -> Result<TokenStream, WorkerError> {
        let mut tried: Vec<Arc<str>> = Vec::new();
        let split = self.split(model);
        let held_back = self.decode_without_prefill(model)?;
        let mut admitted = self.wait_for_room(model, request.prompt.len(), request.priority).await?;
        // Prefill workers do not decode while the model has workers that do.
        let pick = |tried: &[Arc<str>]| {
            let passed_over: Vec<Arc<str>> = tried.iter().chain(&split.prefill).chain(&held_back).cloned().collect();
            self.pick_preferring(model, Some(&request.prompt), hint, prefer, &passed_over)
        };
        // Borrowed for each try: a copy is made only for a worker that keeps it.
        let borrowed = &request;
        let outcome = self
            .on_workers(model, &mut tried, pick, |Picked { member, prompt: scored }| {
                let request = borrowed;
                let remote = (!member.local).then(|| {
                    let outstanding = member.begin();
                    let tracked = self.track(&member, model, &request.prompt, scored);
                    // Counted on its worker now: the queue may let the next one go.
                    admitted.take();
                    (outstanding, tracked, self.prefill_for(model, request.adapter.as_deref(), &request.prompt, &member, &split))
                });
                async move {
                    let Some((outstanding, tracked, prefill)) = remote else {
                        return Ok(Started::Local(member.client.generate(model, request.clone()).await?.served_by(member.id)));
                    };
                    let stream = match prefill {
                        Some((prefill, super::disagg::Prefill::Pull(source))) => {
                            // Counted on the prefill worker until the decode worker has its blocks.
                            let _prefilling = prefill.begin();
                            member.client.generate_with_prefill(model, request.clone(), source).await?
                        }
                        Some((prefill, super::disagg::Prefill::Handoff)) => {
                            super::disagg::generate_after_handoff(model, request.clone(), &member, &prefill).await?
                        }
                        None => member.client.generate_borrowed(model, request).await?,
                    };
                    Ok(Started::Remote { member, stream, outstanding, tracked })
                }
            })
            .await?;
        match outcome {
            Tried::Answered(Ok(Started::Local(stream))) => Ok(stream),
            Tried::Answered(Ok(Started::Remote { member, stream, outstanding, tracked })) => {
                let worker = Arc::clone(&member.id);
                let prefill_worker = stream.prefill_worker().map(Arc::<str>::from);
                let (sender, receiver) = mpsc::unbounded_channel();
                let migration = Migration { model: model.to_string(), request, tried, generated: Vec::new(), split };
                let router = self.this.upgrade();
                tokio::spawn(async move {
                    let _outstanding = outstanding;
                    migration.forward(router, member, stream, sender, tracked).await;
                });
                Ok(TokenStream::new(receiver).served_by(worker).prefilled_by(prefill_worker))
            }
            Tried::Answered(Err(error)) => Err(error),
            Tried::NoneLeft { .. } if tried.is_empty() => {
                self.admit_local(model)?;
                self.fallback.generate(model, request).await
            }
            Tried::NoneLeft { .. } => Err(WorkerError::Generate {
                model: model.to_string(),
                source: GenerateError::Unavailable {
                    model: model.to_string(),
                    message: "no worker serving it could be reached".into(),
                },
            }),
        }
    }
}

/// A generation started on a worker.
enum Started {
    /// On the in-process worker: nothing to migrate from.
    Local(TokenStream),
    /// On a remote worker, counted there until it ends.
    Remote { member: Member, stream: TokenStream, outstanding: super::Outstanding, tracked: Option<super::active::ActiveRequest> },
}

/// A stream in flight on a remote worker, with what is needed to continue it elsewhere.
struct Migration {
    model: String,
    request: GenerateRequest,
    tried: Vec<Arc<str>>,
    generated: Vec<u32>,
    /// The model's prefill and decode workers when it started: a stream continues on a decoder.
    split: super::disagg::Split,
}

type EventSender = mpsc::UnboundedSender<Result<GenerateEvent, GenerateError>>;

impl Migration {
    /// Forwards `stream` to `sender`; when the worker dies mid-stream, continues on another one.
    /// Returns when the generation ends or the client goes away (which drops the worker's stream
    /// and so cancels the sequence there).
    async fn forward(
        mut self,
        router: Option<Arc<Router>>,
        mut member: Member,
        mut stream: TokenStream,
        sender: EventSender,
        mut tracked: Option<super::active::ActiveRequest>,
    ) {
        let prompt_tokens = u32::try_from(self.request.prompt.len()).unwrap_or(u32::MAX);
        let mut migrations = 0u32;
        // Tokens the current worker sent: what it counts beyond them (a stop token it generated
        // and kept back, as engines that count it do) is counted too.
        let mut sent_here = 0u32;
        loop {
            let event = tokio::select! {
                _ = sender.closed() => return,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(GenerateEvent::PromptLogprobs(scores))) => {
                    if sender.send(Ok(GenerateEvent::PromptLogprobs(scores))).is_err() {
                        return;
                    }
                }
                Some(Ok(GenerateEvent::Token(token))) => {
                    if let Some(tracked) = tracked.as_mut() {
                        tracked.token();
                    }
                    self.generated.push(token.id);
                    sent_here = sent_here.saturating_add(1);
                    if sender.send(Ok(GenerateEvent::Token(token))).is_err() {
                        return;
                    }
                }
                Some(Ok(GenerateEvent::Finished { reason, queued_for, cached_tokens, completion_tokens: counted, .. })) => {
                    let unsent = counted.saturating_sub(sent_here);
                    let completion_tokens = u32::try_from(self.generated.len()).unwrap_or(u32::MAX).saturating_add(unsent);
                    // After a failover the last worker saw the prompt plus what was generated.
                    let cached_tokens = cached_tokens.min(prompt_tokens);
                    let finished =
                        GenerateEvent::Finished { reason, prompt_tokens, completion_tokens, cached_tokens, queued_for };
                    let _ = sender.send(Ok(finished));
                    return;
                }
                Some(Err(error)) if !matches!(error, GenerateError::WorkerLost { .. }) => {
                    let _ = sender.send(Err(error));
                    return;
                }
                lost => {
                    let why = match lost {
                        Some(Err(GenerateError::WorkerLost { message, .. })) => {
                            format!("worker '{}' went away mid-stream ({message})", member.id)
                        }
                        _ => format!("worker '{}' went away mid-stream", member.id),
                    };
                    let Some(router) = router.as_ref() else { return self.fail(&sender, why) };
                    router.mark_suspect(&member);
                    if migrations >= router.options.migration_limit {
                        return self.fail(
                            &sender,
                            format!("{why}, and the migration limit ({}) is reached", router.options.migration_limit),
                        );
                    }
                    migrations += 1;
                    self.tried.push(Arc::clone(&member.id));
                    match self.restart(router).await {
                        Some((Picked { member: next_member, prompt: scored }, next_stream)) => {
                            tracing::warn!(from = %member.id, to = %next_member.id, model = %self.model, "{why}; continuing the stream on another worker");
                            router.counters.migrated.fetch_add(1, Ordering::Relaxed);
                            let mut prompt = self.request.prompt.clone();
                            prompt.extend_from_slice(&self.generated);
                            tracked = router.track(&next_member, &self.model, &prompt, scored);
                            member = next_member;
                            stream = next_stream;
                            sent_here = 0;
                        }
                        None => return self.fail(&sender, format!("{why}, and no other worker could continue it")),
                    }
                }
            }
        }
    }

    /// Starts the rest of the sequence on another worker: the prompt plus what was generated.
    async fn restart(&mut self, router: &Router) -> Option<(Picked, TokenStream)> {
        let mut next = self.request.clone();
        next.prompt.extend_from_slice(&self.generated);
        // The prompt's scores went out before its first token; the tokens after it are not prompt.
        if !self.generated.is_empty() {
            next.prompt_logprobs = None;
        }
        let done = u32::try_from(self.generated.len()).unwrap_or(u32::MAX);
        next.stop.max_tokens = next.stop.max_tokens.map(|max| max.saturating_sub(done));
        next.stop.min_tokens = next.stop.min_tokens.saturating_sub(done);
        let (model, split) = (self.model.as_str(), &self.split);
        let pick = |tried: &[Arc<str>]| {
            let passed_over: Vec<Arc<str>> = tried.iter().chain(&split.prefill).cloned().collect();
            // A pick that fails ends the migration as a pick that finds nobody does.
            Ok(router.pick(model, Some(&next.prompt), None, None, &passed_over, true).ok().flatten())
        };
        let outcome = router
            .on_workers(model, &mut self.tried, pick, |picked| {
                let next = next.clone();
                // A Dynamo decode worker takes the rest over as it took the start: from a prefill
                // worker's handoff (SGLang's refuses a request without one); Tritium's compute it.
                let prefill = match router.prefill_for(model, next.adapter.as_deref(), &next.prompt, &picked.member, split) {
                    Some((prefill, super::disagg::Prefill::Handoff)) => Some(prefill),
                    _ => None,
                };
                async move {
                    let stream = match prefill {
                        Some(prefill) => super::disagg::generate_after_handoff(model, next, &picked.member, &prefill).await?,
                        None => picked.member.client.generate(model, next).await?,
                    };
                    Ok((picked, stream))
                }
            })
            .await;
        match outcome {
            Ok(Tried::Answered(Ok(started))) => Some(started),
            Ok(Tried::Answered(Err(e))) => {
                tracing::warn!(model, "continuing a stream failed: {e}");
                None
            }
            Ok(Tried::NoneLeft { .. }) | Err(_) => None,
        }
    }

    fn fail(&self, sender: &EventSender, message: String) {
        let _ = sender.send(Err(GenerateError::Unavailable { model: self.model.clone(), message }));
    }
}

#[async_trait]
impl WorkerClient for Router {
    async fn infer(&self, request: ValidInferRequest) -> Result<InferenceResponse, WorkerError> {
        if let Some(local) = self.sole_local(request.model_name()) {
            return local.infer(request).await;
        }
        let (model, version, arrived) =
            (request.model_name().to_string(), Arc::clone(request.model()), request.request().arrived);
        let hint = hint_of(&request.request().parameters);
        let sticky = sequence_key(&request);
        let mut request = Some(request);
        let mut remote = false;
        let result = self
            .with_failover(&model, None, hint.as_deref(), sticky, |client, local| {
                remote |= !local;
                // Only a remote call can need a second try, so only then is the request copied.
                let this_try = if local { request.take() } else { request.clone() };
                async move {
                    match this_try {
                        Some(request) => client.infer(request).await,
                        None => Err(WorkerError::Failed {
                            code: tritium_proto::ErrorCode::Internal,
                            message: "request already consumed".into(),
                        }),
                    }
                }
            })
            .await;
        if remote {
            Router::record_remote(&version, arrived, result.is_ok());
        }
        result
    }

    async fn infer_stream(&self, request: ValidInferRequest) -> Result<InferOutcome, WorkerError> {
        if let Some(local) = self.sole_local(request.model_name()) {
            return local.infer_stream(request).await;
        }
        let model = request.model_name().to_string();
        let hint = hint_of(&request.request().parameters);
        let sticky = sequence_key(&request);
        let mut request = Some(request);
        self.with_failover(&model, None, hint.as_deref(), sticky, |client, local| {
            let this_try = if local { request.take() } else { request.clone() };
            async move {
                match this_try {
                    Some(request) => client.infer_stream(request).await,
                    None => Err(WorkerError::Failed {
                        code: tritium_proto::ErrorCode::Internal,
                        message: "request already consumed".into(),
                    }),
                }
            }
        })
        .await
    }

    async fn generate(&self, model: &str, request: GenerateRequest) -> Result<TokenStream, WorkerError> {
        self.generate_on(model, None, request).await
    }

    async fn embed(&self, model: &str, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, WorkerError> {
        self.embed_on(model, None, inputs).await
    }

    async fn generate_openai(&self, model: &str, api: OpenAiApi, request: OpenAiRequest) -> Result<OpenAiChunks, WorkerError> {
        self.generate_openai_on(model, None, api, request).await
    }
}

impl Router {
    /// Sends an OpenAI request as it came to the worker `hint` names, else to the one the policy
    /// picks, among the workers of a text-input model (no tokens: no prefix to score).
    pub async fn generate_openai_on(
        &self,
        model: &str,
        hint: Option<&str>,
        api: OpenAiApi,
        request: OpenAiRequest,
    ) -> Result<OpenAiChunks, WorkerError> {
        self.with_failover(model, None, hint, None, |client, _| {
            let request = request.clone();
            async move { client.generate_openai(model, api, request).await }
        })
        .await
    }
}
