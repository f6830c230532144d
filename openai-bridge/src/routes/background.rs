//! `background: true` on the Responses API: the request is answered at once with the response
//! `in_progress` (stored, and shared when the store is), the generation goes on in a task that
//! stores the finished response (`completed`, `incomplete` or `failed`), `GET
//! /v1/responses/{id}` polls it, and `POST /v1/responses/{id}/cancel` stops it (`cancelled`).
//! At most `--responses-background-max` run at once in a frontend; more are refused with 429.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::BridgeError;

/// A running background response: its stop, and its end.
#[derive(Clone)]
struct Running {
    stop: CancellationToken,
    finished: CancellationToken,
}

/// The background responses running in this frontend.
#[derive(Default)]
pub(super) struct Background {
    limit: usize,
    running: Mutex<HashMap<String, Running>>,
}

/// A slot held by one background response; dropping it frees the slot and wakes a canceller.
pub(super) struct Slot {
    background: Arc<Background>,
    id: String,
    pub stop: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(running) = self.background.running.lock().remove(&self.id) {
            running.finished.cancel();
        }
    }
}

impl Background {
    pub(super) fn new(limit: usize) -> Background {
        Background { limit, running: Mutex::new(HashMap::new()) }
    }

    /// A slot for the response `id`, or the refusal when `limit` run already.
    pub(super) fn start(self: &Arc<Self>, id: &str) -> Result<Slot, BridgeError> {
        let mut running = self.running.lock();
        if running.len() >= self.limit {
            return Err(BridgeError::Busy(format!(
                "{} background responses are running, the most this server runs at once (--responses-background-max); retry later",
                self.limit
            )));
        }
        let stop = CancellationToken::new();
        running.insert(id.to_owned(), Running { stop: stop.clone(), finished: CancellationToken::new() });
        Ok(Slot { background: Arc::clone(self), id: id.to_owned(), stop })
    }

    /// Stops the response `id` if it runs here, and waits until it has stored how it ended;
    /// false when it does not run here.
    pub(super) async fn cancel(&self, id: &str) -> bool {
        let Some(running) = self.running.lock().get(id).cloned() else { return false };
        running.stop.cancel();
        running.finished.cancelled().await;
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_bounded_freed_when_dropped_and_a_cancel_waits_for_the_end() {
        let background = Arc::new(Background::new(1));
        let slot = background.start("a").unwrap();
        assert!(matches!(background.start("b"), Err(BridgeError::Busy(_))));
        let stop = slot.stop.clone();
        let ender = tokio::spawn(async move {
            stop.cancelled().await;
            drop(slot);
        });
        assert!(background.cancel("a").await);
        ender.await.unwrap();
        assert!(!background.cancel("a").await, "it ended");
        assert!(background.start("b").is_ok(), "its slot is free again");
    }
}
