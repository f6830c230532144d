//! Counting a worker's calls in flight, so that `tritium worker` can stop on SIGTERM without
//! cutting anybody off: refuse new calls ([`InFlight::drain`]), wait for the count to reach
//! zero ([`InFlight::drained`], bounded by the caller), then exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// The shared in-flight counter and draining flag of a [`super::WorkerService`]; clones share them.
#[derive(Debug, Clone)]
pub struct InFlight {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    count: watch::Sender<usize>,
    draining: AtomicBool,
}

impl Default for InFlight {
    fn default() -> InFlight {
        InFlight::new()
    }
}

impl InFlight {
    pub fn new() -> InFlight {
        InFlight { inner: Arc::new(Inner { count: watch::Sender::new(0), draining: AtomicBool::new(false) }) }
    }

    /// Calls running now (a streaming call counts until its stream ends or is dropped).
    pub fn count(&self) -> usize {
        *self.inner.count.borrow()
    }

    /// Refuses every call from now on; calls already running go on.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Resolves once no call is in flight (at once when none is).
    pub async fn drained(&self) {
        let mut count = self.inner.count.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = count.wait_for(|n| *n == 0).await;
    }

    /// Admits a call unless draining; the call is counted until the guard drops.
    pub fn enter(&self) -> Option<InFlightGuard> {
        // Counted before the flag is read: a drain that starts after this read sees the call.
        self.inner.count.send_modify(|n| *n += 1);
        let guard = InFlightGuard { inner: Arc::clone(&self.inner) };
        (!self.is_draining()).then_some(guard)
    }
}

/// One admitted call; dropping it uncounts the call.
#[derive(Debug)]
pub struct InFlightGuard {
    inner: Arc<Inner>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.inner.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn draining_refuses_new_calls_and_waits_for_running_ones() {
        let in_flight = InFlight::new();
        let running = in_flight.enter().expect("admitted before draining");
        assert_eq!(in_flight.count(), 1);
        in_flight.drain();
        assert!(in_flight.enter().is_none(), "refused while draining");
        assert_eq!(in_flight.count(), 1, "a refused call is not counted");
        assert!(tokio::time::timeout(Duration::from_millis(20), in_flight.drained()).await.is_err());
        drop(running);
        tokio::time::timeout(Duration::from_secs(5), in_flight.drained()).await.expect("drained once the call ends");
        assert_eq!(in_flight.count(), 0);
    }
}
