//! Session affinity (Dynamo's `--router-session-affinity-ttl-secs` and
//! `--router-session-affinity-mode`): the requests of one session (an agent's conversation, named
//! by a header the OpenAI doors read) go to the worker its first request went to, where its
//! prefix is cached, for as long as its requests keep coming within the TTL.
//!
//! A session's first request holds it while the router picks its worker, so a second request of
//! the same session arriving meanwhile waits and follows it instead of picking on its own; once
//! the stream starts the session is bound to that worker. Each request's lease keeps the binding
//! alive until its stream ends; the TTL counts from the last lease's end. In `hard` mode the bound
//! worker is where the session's requests go, busy or not; in `soft` mode the policy picks when it
//! is busy. In both, a bound worker that left or cannot be reached is passed over and the session
//! moves to where its request ran.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Instant;

/// The longest TTL (a year, as Dynamo).
pub const MAX_SESSION_TTL_SECS: u64 = 31_536_000;
/// Sessions held at most by default (Dynamo's bound).
pub const DEFAULT_MAX_SESSIONS: usize = 65_536;
/// The longest session id, in bytes (Dynamo's bound).
pub const MAX_SESSION_ID_BYTES: usize = 256;

/// How a bound session takes part in picking its request's worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AffinityMode {
    /// The bound worker is where the request goes.
    #[default]
    Hard,
    /// The bound worker is tried first; the binding follows where the request ran.
    Soft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffinityOptions {
    /// How long a session whose last request ended stays bound.
    pub ttl: Duration,
    pub mode: AffinityMode,
    /// Sessions held at most; a new one past it is refused until some expire.
    pub max_sessions: usize,
}

/// Why a session could not be held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the session id is longer than {MAX_SESSION_ID_BYTES} bytes")]
    IdTooLong,
    #[error("the router holds {0} sessions, its limit; a new one can start when one expires")]
    Full(usize),
}

enum Entry {
    /// Its first request is picking a worker; later ones wait for it.
    Starting {
        revision: u64,
        ready: Arc<Notify>,
    },
    Bound {
        worker: Arc<str>,
        revision: u64,
        leases: usize,
        idle_until: Instant,
    },
}

/// The router's table of sessions.
pub struct Sessions {
    options: AffinityOptions,
    entries: Mutex<HashMap<String, Entry>>,
    next_revision: AtomicU64,
    /// Counted for `/metrics`: requests that found their session bound, and those that started it.
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("options", &self.options).finish_non_exhaustive()
    }
}

/// A session held for one request.
pub enum Hold {
    /// New (or expired): pick a worker, then [`Sessions::commit`] it.
    Start(Start),
    /// Bound to `worker`; the lease keeps it so while the request runs.
    Bound { worker: Arc<str>, lease: Lease },
}

impl Hold {
    pub fn worker(&self) -> Option<&Arc<str>> {
        match self {
            Hold::Start(_) => None,
            Hold::Bound { worker, .. } => Some(worker),
        }
    }
}

/// A new session's first request, until it is committed; dropped uncommitted (its request failed
/// before reaching a worker), the session is let go and a waiting request starts it over.
pub struct Start {
    table: Arc<Sessions>,
    id: String,
    revision: u64,
    done: bool,
}

impl Drop for Start {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut entries = self.table.entries.lock();
        if let Some(Entry::Starting { revision, ready }) = entries.get(&self.id)
            && *revision == self.revision
        {
            let ready = Arc::clone(ready);
            entries.remove(&self.id);
            drop(entries);
            ready.notify_waiters();
        }
    }
}

/// One request's use of a bound session; the binding's idle time counts from the last one's drop.
pub struct Lease {
    table: Arc<Sessions>,
    id: String,
    revision: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let ttl = self.table.options.ttl;
        if let Some(Entry::Bound { revision, leases, idle_until, .. }) = self.table.entries.lock().get_mut(&self.id)
            && *revision == self.revision
        {
            *leases = leases.saturating_sub(1);
            if *leases == 0 {
                *idle_until = Instant::now() + ttl;
            }
        }
    }
}

impl Sessions {
    pub fn new(options: AffinityOptions) -> Arc<Sessions> {
        Arc::new(Sessions {
            options,
            entries: Mutex::default(),
            next_revision: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    pub fn mode(&self) -> AffinityMode {
        self.options.mode
    }

    /// Sessions held now (bound or starting), expired ones included until they are swept.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Holds session `id` for one request, waiting while another request of it picks its worker.
    pub async fn acquire(self: &Arc<Self>, id: &str) -> Result<Hold, SessionError> {
        if id.len() > MAX_SESSION_ID_BYTES {
            return Err(SessionError::IdTooLong);
        }
        loop {
            let wait = match self.try_acquire(id)? {
                Step::Held(hold) => return Ok(hold),
                Step::Wait(wait) => wait,
            };
            wait.await;
        }
    }

    fn try_acquire(self: &Arc<Self>, id: &str) -> Result<Step, SessionError> {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        match entries.get_mut(id) {
            Some(Entry::Starting { ready, .. }) => {
                // Registered before the lock is let go, so a commit in between is not missed.
                let mut wait = Box::pin(Arc::clone(ready).notified_owned());
                wait.as_mut().enable();
                return Ok(Step::Wait(wait));
            }
            Some(Entry::Bound { worker, revision, leases, idle_until }) if *leases > 0 || *idle_until > now => {
                *leases += 1;
                self.hits.fetch_add(1, Ordering::Relaxed);
                let lease = Lease { table: Arc::clone(self), id: id.to_owned(), revision: *revision };
                return Ok(Step::Held(Hold::Bound { worker: Arc::clone(worker), lease }));
            }
            Some(Entry::Bound { .. }) => {}
            None => {
                if entries.len() >= self.options.max_sessions {
                    entries.retain(|_, entry| !expired(entry, now));
                }
                if entries.len() >= self.options.max_sessions {
                    return Err(SessionError::Full(self.options.max_sessions));
                }
            }
        }
        let revision = self.next_revision.fetch_add(1, Ordering::Relaxed);
        entries.insert(id.to_owned(), Entry::Starting { revision, ready: Arc::new(Notify::new()) });
        self.misses.fetch_add(1, Ordering::Relaxed);
        Ok(Step::Held(Hold::Start(Start { table: Arc::clone(self), id: id.to_owned(), revision, done: false })))
    }

    /// Binds session `id` to `worker` as another router did (`--router-replica-sync`), unless a
    /// request of it is starting or running here (this router's own pick stands). The binding
    /// idles from now, so it lasts the TTL past the other router's last request; past the bound
    /// of sessions none is adopted.
    pub fn adopt(&self, id: &str, worker: Arc<str>) {
        if id.len() > MAX_SESSION_ID_BYTES {
            return;
        }
        let now = Instant::now();
        let idle = now + self.options.ttl;
        let mut entries = self.entries.lock();
        match entries.get_mut(id) {
            Some(Entry::Starting { .. }) => return,
            Some(Entry::Bound { leases, .. }) if *leases > 0 => return,
            Some(Entry::Bound { worker: bound, idle_until, .. }) => {
                (*bound, *idle_until) = (worker, idle);
                return;
            }
            None => {}
        }
        if entries.len() >= self.options.max_sessions {
            entries.retain(|_, entry| !expired(entry, now));
            if entries.len() >= self.options.max_sessions {
                return;
            }
        }
        let revision = self.next_revision.fetch_add(1, Ordering::Relaxed);
        entries.insert(id.to_owned(), Entry::Bound { worker, revision, leases: 0, idle_until: idle });
    }

    /// Binds the held session to `worker`, where its request started; the lease keeps it bound
    /// until that request ends. A bound session moves to `worker` when its request ran elsewhere
    /// (soft mode, or a hard binding whose worker could not take it).
    pub fn commit(self: &Arc<Self>, hold: Hold, worker: &Arc<str>) -> Lease {
        let mut start = match hold {
            Hold::Start(start) => start,
            Hold::Bound { lease, .. } => {
                if let Some(Entry::Bound { worker: bound, revision, .. }) = self.entries.lock().get_mut(&lease.id)
                    && *revision == lease.revision
                    && bound != worker
                {
                    *bound = Arc::clone(worker);
                }
                return lease;
            }
        };
        start.done = true;
        let (id, revision) = (std::mem::take(&mut start.id), start.revision);
        let mut entries = self.entries.lock();
        if let Some(entry) = entries.get_mut(&id)
            && matches!(entry, Entry::Starting { revision: r, .. } if *r == revision)
        {
            let bound = Entry::Bound { worker: Arc::clone(worker), revision, leases: 1, idle_until: Instant::now() };
            if let Entry::Starting { ready, .. } = std::mem::replace(entry, bound) {
                drop(entries);
                ready.notify_waiters();
            }
        }
        Lease { table: Arc::clone(self), id, revision }
    }
}

enum Step {
    Held(Hold),
    Wait(Pin<Box<OwnedNotified>>),
}

fn expired(entry: &Entry, now: Instant) -> bool {
    matches!(entry, Entry::Bound { leases: 0, idle_until, .. } if *idle_until <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(ttl_secs: u64, max_sessions: usize) -> Arc<Sessions> {
        Sessions::new(AffinityOptions { ttl: Duration::from_secs(ttl_secs), mode: AffinityMode::Hard, max_sessions })
    }

    fn worker(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_stays_on_its_first_worker_until_idle_past_the_ttl() {
        let table = sessions(10, 8);
        let first = table.acquire("s").await.expect("held");
        assert!(first.worker().is_none());
        let lease = table.commit(first, &worker("w1"));
        let again = table.acquire("s").await.expect("held");
        assert_eq!(again.worker().map(|w| &**w), Some("w1"));
        drop(again);
        drop(lease);
        // Idle for less than the TTL: still bound; past it: a new start.
        tokio::time::advance(Duration::from_secs(9)).await;
        let within = table.acquire("s").await.expect("held");
        assert_eq!(within.worker().map(|w| &**w), Some("w1"));
        drop(within);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(table.acquire("s").await.expect("held").worker().is_none());
        assert_eq!((table.hits.load(Ordering::Relaxed), table.misses.load(Ordering::Relaxed)), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_request_keeps_its_session_past_the_ttl() {
        let table = sessions(1, 8);
        let lease = table.commit(table.acquire("s").await.expect("held"), &worker("w1"));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(table.acquire("s").await.expect("held").worker().map(|w| &**w), Some("w1"));
        drop(lease);
    }

    #[tokio::test]
    async fn a_second_request_waits_for_the_first_to_pick_and_follows_it() {
        let table = sessions(10, 8);
        let first = table.acquire("s").await.expect("held");
        let waiter = tokio::spawn({
            let table = Arc::clone(&table);
            async move { table.acquire("s").await.expect("held").worker().map(|w| w.to_string()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits while the first request picks");
        let _lease = table.commit(first, &worker("w2"));
        assert_eq!(waiter.await.expect("joined").as_deref(), Some("w2"));
    }

    #[tokio::test]
    async fn a_first_request_that_fails_lets_a_waiting_one_start_the_session() {
        let table = sessions(10, 8);
        let first = table.acquire("s").await.expect("held");
        let waiter = tokio::spawn({
            let table = Arc::clone(&table);
            async move { table.acquire("s").await.expect("held").worker().is_none() }
        });
        tokio::task::yield_now().await;
        drop(first);
        assert!(waiter.await.expect("joined"), "the waiting request starts it over");
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_are_bounded_in_number_and_id_length() {
        let table = sessions(5, 1);
        let lease = table.commit(table.acquire("a").await.expect("held"), &worker("w1"));
        assert_eq!(table.acquire("b").await.err(), Some(SessionError::Full(1)));
        drop(lease);
        tokio::time::advance(Duration::from_secs(6)).await;
        // The expired session is swept to make room.
        let held = table.acquire("b").await.expect("room again");
        assert_eq!(table.len(), 1);
        drop(held);
        let long = "x".repeat(MAX_SESSION_ID_BYTES + 1);
        assert_eq!(table.acquire(&long).await.err(), Some(SessionError::IdTooLong));
    }

    #[tokio::test]
    async fn a_binding_follows_where_its_request_ran() {
        let table = sessions(10, 8);
        drop(table.commit(table.acquire("s").await.expect("held"), &worker("w1")));
        let held = table.acquire("s").await.expect("held");
        drop(table.commit(held, &worker("w2")));
        let held = table.acquire("s").await.expect("held");
        assert_eq!(held.worker().map(|w| &**w), Some("w2"));
    }

    #[tokio::test(start_paused = true)]
    async fn another_routers_binding_is_adopted_unless_one_runs_here_and_within_the_bound() {
        let table = sessions(10, 2);
        table.adopt("s", worker("w1"));
        let held = table.acquire("s").await.expect("held");
        assert_eq!(held.worker().map(|w| &**w), Some("w1"), "adopted");
        // A request of it running here keeps this router's binding.
        let lease = table.commit(held, &worker("w1"));
        table.adopt("s", worker("w2"));
        drop(lease);
        assert_eq!(table.acquire("s").await.expect("held").worker().map(|w| &**w), Some("w1"));
        // Idle here, it follows the other router, and lasts the TTL from then.
        tokio::time::advance(Duration::from_secs(8)).await;
        table.adopt("s", worker("w2"));
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(table.acquire("s").await.expect("held").worker().map(|w| &**w), Some("w2"));
        // Past the bound nothing is adopted; over-long ids never are.
        table.adopt("t", worker("w1"));
        table.adopt("u", worker("w1"));
        assert_eq!(table.len(), 2);
        table.adopt(&"x".repeat(MAX_SESSION_ID_BYTES + 1), worker("w1"));
        assert_eq!(table.len(), 2);
    }
}
