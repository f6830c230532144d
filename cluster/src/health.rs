//! Whether this process's connections to the cluster's services still take its credentials.
//! A credential revoked while running (a NATS user or token removed, an etcd user deleted or
//! its role revoked) makes the service refuse the process's calls; the connection reports that
//! here, and the process answers not-ready (ServerReady, `/v2/health/ready`, `/health`, the
//! worker's gRPC health) naming the service, instead of hanging or looking healthy while its
//! planes are cut. The connection reports again when the service takes it back.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// The services this process's credentials were refused by, shared by every connection of one
/// process (a clone reports into the same set).
#[derive(Clone)]
pub struct PlaneHealth {
    refused: Arc<Mutex<BTreeMap<&'static str, String>>>,
    /// Whether nothing is refused, for those who follow the changes.
    ready: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for PlaneHealth {
    fn default() -> PlaneHealth {
        PlaneHealth { refused: Arc::default(), ready: Arc::new(tokio::sync::watch::channel(true).0) }
    }
}

impl std::fmt::Debug for PlaneHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaneHealth").field("refused", &*self.refused.lock()).finish()
    }
}

impl PlaneHealth {
    /// `plane` (e.g. "NATS (events)") refuses this process: `why`, never a secret.
    pub fn refused(&self, plane: &'static str, why: impl Into<String>) {
        let why = why.into();
        let mut refused = self.refused.lock();
        if refused.get(plane) != Some(&why) {
            tracing::error!(plane, "{why}: this process reports not-ready until it is taken back");
            refused.insert(plane, why);
            self.ready.send_replace(false);
        }
    }

    /// `plane` takes this process's calls (again).
    pub fn accepted(&self, plane: &'static str) {
        let mut refused = self.refused.lock();
        if refused.remove(plane).is_some() {
            tracing::info!(plane, "the service takes this process's credentials again");
            self.ready.send_replace(refused.is_empty());
        }
    }

    /// Whether every service takes this process's credentials.
    pub fn is_ready(&self) -> bool {
        self.refused.lock().is_empty()
    }

    /// Follows whether nothing is refused.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Each refusing service with why, for logs and health answers.
    pub fn problems(&self) -> Vec<String> {
        self.refused.lock().iter().map(|(plane, why)| format!("{plane}: {why}")).collect()
    }

    /// A NATS connection's event callback for `plane`: the server's authorization violation (a
    /// token, user, nkey or credentials file it no longer takes) refuses, a (re)connection
    /// accepts; every event is logged.
    pub fn nats_events(
        &self,
        plane: &'static str,
    ) -> impl Fn(async_nats::Event) -> futures::future::Ready<()> + Send + Sync + 'static {
        let health = self.clone();
        move |event| {
            match &event {
                async_nats::Event::Connected => {
                    tracing::info!(plane, "NATS connection: {event}");
                    health.accepted(plane);
                }
                async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
                    health.refused(plane, "the NATS server refuses this process's credentials (authorization violation)");
                }
                _ => tracing::warn!(plane, "NATS connection: {event}"),
            }
            futures::future::ready(())
        }
    }

    /// Reports an etcd call's outcome for `plane`: a refusal of the credentials (the user or its
    /// token gone, the permission revoked) refuses; any answer accepts. Transport failures say
    /// nothing about credentials and change nothing.
    pub fn etcd_outcome<T>(&self, plane: &'static str, outcome: &Result<T, etcd_client::Error>) {
        match outcome {
            Ok(_) => self.accepted(plane),
            Err(e) => self.etcd_error(plane, e),
        }
    }

    /// Reports an etcd error for `plane` when it is a refusal of the credentials.
    pub fn etcd_error(&self, plane: &'static str, error: &etcd_client::Error) {
        if let Some(why) = etcd_refusal(error) {
            self.refused(plane, why);
        }
    }
}

/// Why etcd refused the credentials, when `error` is such a refusal.
fn etcd_refusal(error: &etcd_client::Error) -> Option<String> {
    let etcd_client::Error::GRpcStatus(status) = error else { return None };
    let message = status.message();
    let refused = matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
        || ["invalid auth token", "user name not found", "authentication failed", "permission denied"]
            .iter()
            .any(|said| message.contains(said));
    refused.then(|| format!("etcd refuses this process's credentials ({message})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_holds_until_the_service_takes_the_process_back() {
        let health = PlaneHealth::default();
        let shared = health.clone();
        assert!(health.is_ready());
        let callback = shared.nats_events("NATS (events)");
        drop(callback(async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation)));
        drop(callback(async_nats::Event::Disconnected));
        assert!(!health.is_ready());
        assert_eq!(health.problems().len(), 1);
        assert!(health.problems()[0].starts_with("NATS (events): the NATS server refuses"));
        drop(callback(async_nats::Event::Connected));
        assert!(health.is_ready());
    }

    #[test]
    fn etcd_refusals_are_told_from_transport_failures() {
        let health = PlaneHealth::default();
        let denied: Result<(), _> =
            Err(etcd_client::Error::GRpcStatus(tonic::Status::permission_denied("etcdserver: permission denied")));
        health.etcd_outcome("etcd (discovery)", &denied);
        assert!(!health.is_ready());
        let unreachable: Result<(), _> = Err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable("connection refused")));
        health.etcd_outcome("etcd (discovery)", &unreachable);
        assert!(!health.is_ready(), "a transport failure does not clear a refusal");
        health.etcd_outcome("etcd (discovery)", &Ok::<(), etcd_client::Error>(()));
        assert!(health.is_ready());
        let other: Result<(), _> = Err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable("no leader")));
        health.etcd_outcome("etcd (discovery)", &other);
        assert!(health.is_ready());
    }
}
