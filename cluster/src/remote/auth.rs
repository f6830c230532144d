//! The worker plane's shared token: frontends send `authorization: Bearer <token>` on every call,
//! workers refuse calls without it (UNAUTHENTICATED). A worker bound to anything but loopback must
//! have a token (`--worker-token`), so no one who can reach its port can run models on it.

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};

const HEADER: &str = "authorization";

/// The frontend's side: adds the token to each call (nothing without one).
#[derive(Debug, Clone, Default)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> Result<BearerToken, String> {
        match token.filter(|t| !t.is_empty()) {
            None => Ok(BearerToken(None)),
            Some(token) => AsciiMetadataValue::try_from(format!("Bearer {token}"))
                .map(|value| BearerToken(Some(value)))
                .map_err(|_| "--worker-token must be printable ASCII".to_string()),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(HEADER, value.clone());
        }
        Ok(request)
    }
}

/// The worker's side: with a token set, refuses calls that lack it.
#[derive(Debug, Clone, Default)]
pub struct RequireToken(Option<String>);

impl RequireToken {
    pub fn new(token: Option<&str>) -> RequireToken {
        RequireToken(token.filter(|t| !t.is_empty()).map(|t| format!("Bearer {t}")))
    }

    fn admits(&self, metadata: &MetadataMap) -> bool {
        let Some(expected) = &self.0 else { return true };
        let given = metadata.get(HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        // Compared without an early exit, so the time taken does not tell how much matched.
        given.len() == expected.len() && given.iter().zip(expected.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.admits(request.metadata()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("this worker requires the worker-plane token (--worker-token)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = value {
            request.metadata_mut().insert(HEADER, value.parse().expect("ascii"));
        }
        request
    }

    #[test]
    fn the_worker_admits_only_the_frontends_token() {
        let mut worker = RequireToken::new(Some("s3cret"));
        let mut frontend = BearerToken::new(Some("s3cret")).expect("a token");
        let sent = frontend.call(Request::new(())).expect("adds the header");
        assert!(worker.call(sent).is_ok());
        for wrong in [None, Some("Bearer s3cre"), Some("Bearer s3cret2"), Some("s3cret")] {
            let status = worker.call(with_header(wrong)).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{wrong:?}");
        }
        assert!(RequireToken::new(None).call(with_header(None)).is_ok(), "no token, no check");
        assert!(BearerToken::new(Some("bad\ntoken")).is_err());
    }
}
