//! Google Cloud Storage through its JSON API (`/storage/v1/b/<bucket>/o`), which real GCS and its
//! emulators (`STORAGE_EMULATOR_HOST`) both serve; `object_store`'s GCS client speaks the XML API,
//! which the emulators lack. The OAuth token still comes from `object_store`'s GCS credentials
//! (service account or application default credentials); an emulator takes none.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::gcp::GcpCredentialProvider;
use object_store::path::Path as ObjectPath;
use object_store::{Error, ObjectMeta};

/// Pages of one listing, at most (1000 entries a page).
const MAX_PAGES: usize = 10_000;

pub(crate) struct GcsJson {
    http: reqwest::Client,
    /// `https://storage.googleapis.com` or the emulator's URL.
    base: String,
    bucket: String,
    credentials: Option<GcpCredentialProvider>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    items: Vec<Item>,
    #[serde(default)]
    prefixes: Vec<String>,
    next_page_token: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Item {
    name: String,
    size: Option<String>,
    etag: Option<String>,
    md5_hash: Option<String>,
    generation: Option<String>,
}

fn generic(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Generic { store: "GCS", source: source.into() }
}

impl GcsJson {
    pub(crate) fn new(base: &str, bucket: &str, credentials: Option<GcpCredentialProvider>) -> Result<GcsJson, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30 * 60))
            .build()
            .map_err(|e| format!("the HTTP client: {e}"))?;
        Ok(GcsJson { http, base: base.trim_end_matches('/').to_string(), bucket: bucket.to_string(), credentials })
    }

    fn url(&self, segments: &[&str]) -> Result<reqwest::Url, Error> {
        let mut url = reqwest::Url::parse(&self.base).map_err(generic)?;
        url.path_segments_mut().map_err(|_| generic("the base URL cannot take a path"))?.pop_if_empty().extend(segments);
        Ok(url)
    }

    async fn send(&self, request: reqwest::RequestBuilder, path: &str) -> Result<reqwest::Response, Error> {
        let request = match &self.credentials {
            Some(credentials) => request.bearer_auth(&credentials.get_credential().await?.bearer),
            None => request,
        };
        let response = request.send().await.map_err(generic)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // The body is not echoed: only the status says what went wrong.
        let source = format!("HTTP {status}").into();
        Err(match status.as_u16() {
            404 => Error::NotFound { path: path.to_string(), source },
            401 => Error::Unauthenticated { path: path.to_string(), source },
            403 => Error::PermissionDenied { path: path.to_string(), source },
            _ => generic(format!("HTTP {status}")),
        })
    }

    /// The objects under `prefix/` (every object, or with `delimiter` the folder names directly
    /// under it).
    async fn pages(&self, prefix: &str, delimiter: bool) -> Result<(Vec<ObjectMeta>, Vec<String>), Error> {
        let url = self.url(&["storage", "v1", "b", &self.bucket, "o"])?;
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        let (mut objects, mut folders) = (Vec::new(), Vec::new());
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query: Vec<(&str, &str)> = vec![("prefix", &prefix), ("maxResults", "1000")];
            if delimiter {
                query.push(("delimiter", "/"));
            }
            if let Some(token) = &token {
                query.push(("pageToken", token));
            }
            let response = self.send(self.http.get(url.clone()).query(&query), &self.bucket).await?;
            let page: Page = response.json().await.map_err(generic)?;
            for item in page.items {
                let location = ObjectPath::parse(&item.name)?;
                let size = item.size.as_deref().unwrap_or("0").parse::<u64>().map_err(generic)?;
                let e_tag = item.etag.or(item.md5_hash).or(item.generation);
                objects.push(ObjectMeta { location, last_modified: Default::default(), size, e_tag, version: None });
            }
            folders.extend(page.prefixes.into_iter().map(|p| p.trim_end_matches('/').to_string()));
            match page.next_page_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok((objects, folders)),
            }
        }
        Err(generic(format!("the listing has more than {MAX_PAGES} pages")))
    }

    /// The folder names directly under `prefix`.
    pub(crate) async fn folders(&self, prefix: &str) -> Result<Vec<ObjectPath>, Error> {
        // A bucket that does not exist lists as an error, not as an empty repository.
        self.send(self.http.get(self.url(&["storage", "v1", "b", &self.bucket])?), &self.bucket).await?;
        let (_, folders) = self.pages(prefix, true).await?;
        folders.iter().map(ObjectPath::parse).collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    pub(crate) async fn objects(&self, prefix: &str) -> Result<Vec<ObjectMeta>, Error> {
        Ok(self.pages(prefix, false).await?.0)
    }

    pub(crate) async fn get(&self, location: &ObjectPath) -> Result<BoxStream<'static, Result<Bytes, Error>>, Error> {
        let url = self.url(&["download", "storage", "v1", "b", &self.bucket, "o", location.as_ref()])?;
        let response = self.send(self.http.get(url).query(&[("alt", "media")]), location.as_ref()).await?;
        Ok(response.bytes_stream().map(|chunk| chunk.map_err(generic)).boxed())
    }
}
