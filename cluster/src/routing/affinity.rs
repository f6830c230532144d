//! Session affinity in the router's picks: the worker a session is bound to (see [`super::sessions`])
//! tried first, strictly in `hard` mode.

use std::sync::Arc;
use std::time::Instant;

use tritium_backend_api::llm::IMPLIED_SESSION_MARK;
use tritium_worker::WorkerError;

use super::sessions::{AffinityMode, Hold, SessionError, Sessions};
use super::{Member, Picked, Router};

/// The worker a session is bound to, tried first; `strict` (hard affinity): while it serves the
/// model and can be reached, a busy one is not passed over.
#[derive(Debug, Clone, Copy)]
pub(super) struct Preferred<'a> {
    pub(super) worker: &'a str,
    pub(super) strict: bool,
}

impl Router {
    /// The session `session` held for one request; `None` when session affinity is off.
    pub(super) async fn hold_session(&self, session: &str) -> Result<Option<(Arc<Sessions>, Hold)>, WorkerError> {
        let Some(sessions) = &self.sessions else { return Ok(None) };
        let hold = match sessions.acquire(session).await {
            Err(SessionError::Full(held)) if session.starts_with(IMPLIED_SESSION_MARK) => {
                tracing::debug!(held, "the session table is full; a conversation the server keyed goes without affinity");
                return Ok(None);
            }
            other => other,
        };
        let hold = hold.map_err(|error| {
            let code = match error {
                SessionError::IdTooLong => tritium_proto::ErrorCode::InvalidArg,
                SessionError::Full(_) => tritium_proto::ErrorCode::ResourceExhausted,
            };
            WorkerError::Failed { code, message: format!("session affinity: {error}") }
        })?;
        Ok(Some((Arc::clone(sessions), hold)))
    }

    /// Tells the other replicas that `session` is bound to `worker` (`--router-replica-sync`);
    /// dropped when the publisher is behind (a binding is a hint, and the next request shares it
    /// again).
    pub(super) fn share_session(&self, session: &str, worker: &str) {
        let Some(out) = self.replica_out.get() else { return };
        let event = crate::events::WorkerEvent::ReplicaSession {
            router: self.replica_id.clone(),
            session: session.to_owned(),
            worker: worker.to_owned(),
        };
        if out.try_send(event).is_err() {
            tracing::debug!("the replica-sync publisher is behind; a session binding was not shared");
        }
    }

    /// Another replica's session binding, adopted here (own ones come back and are skipped; see
    /// [`Sessions::adopt`]).
    pub(crate) fn replica_session(&self, from: &str, session: &str, worker: &str) {
        let Some(sessions) = &self.sessions else { return };
        if !self.options.replica_sync || from == self.replica_id {
            return;
        }
        // Only workers this router knows: a name from elsewhere must not bind a session.
        let Some(id) = self.members.lock().get_key_value(worker).map(|(id, _)| Arc::clone(id)) else { return };
        sessions.adopt(session, id);
    }

    /// The worker a held session is bound to, to try first. One that left, or could not be
    /// reached lately, is not asked: the policy picks and the session moves.
    pub(super) fn preferred<'h>(&self, model: &str, sessions: &Sessions, hold: &'h Hold) -> Option<Preferred<'h>> {
        let worker = hold.worker().filter(|worker| self.can_take(model, worker))?;
        Some(Preferred { worker, strict: sessions.mode() == AffinityMode::Hard })
    }

    /// [`Self::pick`], trying the `prefer`red worker first: when it is busy, the policy picks too
    /// unless the preference is strict.
    pub(super) fn pick_preferring(
        &self,
        model: &str,
        tokens: Option<&[u32]>,
        hint: Option<&str>,
        prefer: Option<Preferred<'_>>,
        passed_over: &[Arc<str>],
    ) -> Result<Option<Picked>, WorkerError> {
        if let Some(Preferred { worker, strict }) = prefer.filter(|p| !passed_over.iter().any(|t| &**t == p.worker)) {
            if strict && self.can_take(model, worker) {
                return self.pick(model, tokens, Some(worker), None, passed_over, false);
            }
            if let Some(picked) = self.pick_free(model, worker) {
                return Ok(Some(picked));
            }
        }
        self.pick(model, tokens, hint, None, passed_over, false)
    }

    /// `worker` when it serves `model`, can be reached and is not busy (nothing refused or counted).
    fn pick_free(&self, model: &str, worker: &str) -> Option<Picked> {
        let table = self.table.load();
        let member = table.get(model)?.iter().find(|m| &*m.id == worker && !m.is_suspect(Instant::now()))?;
        let free = self.free_of(model, vec![member], false).ok()?;
        free.first().map(|member| Picked::unscored(Member::clone(member)))
    }

    /// Whether `worker` serves `model` and was not found unreachable lately.
    fn can_take(&self, model: &str, worker: &str) -> bool {
        let now = Instant::now();
        self.table.load().get(model).is_some_and(|route| route.iter().any(|m| &*m.id == worker && !m.is_suspect(now)))
    }
}
