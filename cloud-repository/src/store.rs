//! One `object_store` client per location, and errors scrubbed of every secret the client knows.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectMeta, ObjectStore, RetryConfig};

use crate::gcs::GcsJson;

use crate::credentials::{CloudEnvironment, secrets_of};
use crate::location::{Location, Store};

/// A client and the secrets it holds (never to appear in an error or a log line).
pub(crate) struct Client {
    pub objects: Objects,
    pub secrets: Vec<String>,
}

/// The three calls a repository makes, over `object_store` (S3, Azure) or GCS's JSON API.
#[derive(Clone)]
pub(crate) enum Objects {
    Store(Arc<dyn ObjectStore>),
    Gcs(Arc<GcsJson>),
}

impl Objects {
    /// The folders directly under `prefix` (empty: the bucket's top).
    pub(crate) async fn folders(&self, prefix: &str) -> Result<Vec<ObjectPath>, object_store::Error> {
        match self {
            Objects::Store(store) => {
                let top = if prefix.is_empty() { None } else { Some(ObjectPath::parse(prefix)?) };
                Ok(store.list_with_delimiter(top.as_ref()).await?.common_prefixes)
            }
            Objects::Gcs(gcs) => gcs.folders(prefix).await,
        }
    }

    /// Every object under `prefix/`.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, object_store::Error> {
        match self {
            Objects::Store(store) => {
                let path = ObjectPath::parse(prefix)?;
                store.list(Some(&path)).try_collect().await
            }
            Objects::Gcs(gcs) => gcs.objects(prefix).await,
        }
    }

    pub(crate) async fn get(
        &self,
        location: &ObjectPath,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
        match self {
            Objects::Store(store) => Ok(object_store::ObjectStoreExt::get(&**store, location).await?.into_stream()),
            Objects::Gcs(gcs) => gcs.get(location).await,
        }
    }
}

/// An unreachable endpoint fails within seconds, not the client's default minutes of retries.
fn retry() -> RetryConfig {
    RetryConfig { backoff: BackoffConfig::default(), max_retries: 2, retry_timeout: Duration::from_secs(15) }
}

/// Connecting is bounded; a request (a large model file) may take up to half an hour.
fn client_options(endpoint: Option<&str>) -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30 * 60))
        .with_allow_http(endpoint.is_some_and(|e| e.starts_with("http://")))
}

/// The client for `location`; an error is a sentence (missing credentials, a setting the client
/// refuses) without the location, which the caller adds.
pub(crate) fn connect(location: &Location, env: &CloudEnvironment) -> Result<Client, String> {
    match &location.store {
        Store::S3 { endpoint } => {
            let settings = env.s3(location, endpoint.as_deref())?;
            let secrets = secrets_of(&[settings.key_id.as_ref(), settings.secret_key.as_ref(), settings.session_token.as_ref()]);
            let (Some(key_id), Some(secret)) = (&settings.key_id, &settings.secret_key) else {
                return Err("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in ~/.aws/credentials, \
                     or TRITON_CLOUD_CREDENTIAL_PATH"
                    .to_string());
            };
            let mut builder = AmazonS3Builder::new()
                .with_bucket_name(&location.bucket)
                .with_region(&settings.region)
                .with_access_key_id(key_id)
                .with_secret_access_key(secret)
                .with_retry(retry())
                .with_client_options(client_options(settings.endpoint.as_deref()));
            if let Some(token) = &settings.session_token {
                builder = builder.with_token(token);
            }
            if let Some(endpoint) = &settings.endpoint {
                builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
            }
            let store = builder.build().map_err(|e| scrub(&e.to_string(), &secrets))?;
            Ok(Client { objects: Objects::Store(Arc::new(store)), secrets })
        }
        Store::Gcs => {
            let settings = env.gcs(location)?;
            let mut builder = GoogleCloudStorageBuilder::new()
                .with_bucket_name(&location.bucket)
                .with_retry(retry())
                .with_client_options(client_options(settings.emulator.as_deref()));
            let gcs = if let Some(emulator) = &settings.emulator {
                // An emulator takes no credentials, as the Google SDKs do with STORAGE_EMULATOR_HOST.
                GcsJson::new(emulator, &location.bucket, None)?
            } else if let Some(path) = &settings.credentials_path {
                builder = builder.with_application_credentials(path);
                let store = builder.build().map_err(|e| scrub(&e.to_string(), &[]))?;
                GcsJson::new(GCS_URL, &location.bucket, Some(Arc::clone(store.credentials())))?
            } else {
                return Err("no credentials: set GOOGLE_APPLICATION_CREDENTIALS (or STORAGE_EMULATOR_HOST for an emulator), \
                     or TRITON_CLOUD_CREDENTIAL_PATH"
                    .to_string());
            };
            Ok(Client { objects: Objects::Gcs(Arc::new(gcs)), secrets: Vec::new() })
        }
        Store::Azure { account } => {
            let settings = env.azure(location, account)?;
            let secrets = secrets_of(&[settings.key.as_ref()]);
            let Some(key) = &settings.key else {
                return Err("no credentials: set AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY, or TRITON_CLOUD_CREDENTIAL_PATH"
                    .to_string());
            };
            let mut builder = MicrosoftAzureBuilder::new()
                .with_account(account)
                .with_container_name(&location.bucket)
                .with_access_key(key)
                .with_retry(retry())
                .with_client_options(client_options(settings.emulator.as_deref()));
            if settings.emulator.is_some() {
                // object_store reads AZURITE_BLOB_STORAGE_URL itself in emulator mode.
                builder = builder.with_use_emulator(true);
            }
            let store = builder.build().map_err(|e| scrub(&e.to_string(), &secrets))?;
            Ok(Client { objects: Objects::Store(Arc::new(store)), secrets })
        }
    }
}

const GCS_URL: &str = "https://storage.googleapis.com";

/// `text` with every secret replaced, on one line and at most 400 characters (a store's error
/// body can be long).
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.replace(['\n', '\r'], " ");
    for secret in secrets {
        text = text.replace(secret.as_str(), "***");
    }
    if text.chars().count() > 400 {
        text = text.chars().take(400).chain("...".chars()).collect();
    }
    text
}

/// A store error in words: what went wrong, without the response bodies' echoes of requests.
pub(crate) fn describe(error: &object_store::Error, secrets: &[String]) -> String {
    use object_store::Error;
    let what = match error {
        Error::NotFound { .. } => "not found".to_string(),
        Error::PermissionDenied { .. } => "permission denied (check the credentials)".to_string(),
        Error::Unauthenticated { .. } => "authentication failed (check the credentials)".to_string(),
        other => {
            let text = full_text(other);
            let lower = text.to_ascii_lowercase();
            if lower.contains("nosuchbucket") || lower.contains("containernotfound") || lower.contains("404 not found") {
                "the bucket or container does not exist".to_string()
            } else if lower.contains("signaturedoesnotmatch")
                || lower.contains("invalidaccesskeyid")
                || lower.contains("authenticationfailed")
                || lower.contains("403 forbidden")
                || lower.contains("401 unauthorized")
            {
                "access denied (check the credentials)".to_string()
            } else if lower.contains("connect") || lower.contains("dns") || lower.contains("timed out") {
                "the endpoint is unreachable".to_string()
            } else {
                text
            }
        }
    };
    scrub(&what, secrets)
}

/// An error and its sources, joined.
fn full_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_secrets_and_bounds_length() {
        let secrets = vec!["s3cr3tKEY".to_string()];
        let out = scrub("bad request for s3cr3tKEY\nwith body", &secrets);
        assert_eq!(out, "bad request for *** with body");
        assert!(scrub(&"x".repeat(1000), &[]).len() < 410);
    }

    #[test]
    fn missing_credentials_are_named() {
        let env = CloudEnvironment::default();
        for url in ["s3://bucket/x", "gs://bucket/x", "as://acct/container"] {
            let error = connect(&crate::location::parse(url).unwrap(), &env).err().unwrap();
            assert!(error.starts_with("no credentials"), "{url}: {error}");
        }
    }
}
