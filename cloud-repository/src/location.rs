//! `--model-repository` URLs in Triton's forms: `s3://bucket/path`, `s3://HOST:PORT/bucket/path` and
//! `s3://http://HOST:PORT/bucket/path` (and `https://`), `gs://bucket/path` and `as://account/container/path`.

use std::fmt;

/// Which object store a location names, with what only that store needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// Amazon S3, or an S3-compatible server at `endpoint` (`http://HOST:PORT`).
    S3 { endpoint: Option<String> },
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage in `account`.
    Azure { account: String },
}

/// A parsed repository location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The location as the operator wrote it, for errors and logs (it holds no secret: a URL with
    /// user information is refused).
    pub url: String,
    pub store: Store,
    /// The bucket (S3, GCS) or container (Azure).
    pub bucket: String,
    /// The folder inside the bucket that holds the model folders, without leading or trailing
    /// `/`; empty for the bucket's top.
    pub prefix: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Why a `--model-repository` value is not a usable location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("--model-repository '{url}': unknown scheme '{scheme}' (supported: s3://, gs://, as://, or a local folder)")]
    UnknownScheme { url: String, scheme: String },
    #[error("--model-repository '{url}': {reason}")]
    Malformed { url: String, reason: String },
}

/// Whether a `--model-repository` value is a URL (`scheme://...`) rather than a local folder.
pub fn is_url(text: &str) -> bool {
    text.split_once("://")
        .is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+'))
}

/// Parses one location; every part of it is checked, so nothing odd reaches a request URL.
pub fn parse(text: &str) -> Result<Location, LocationError> {
    // A URL with user information may hold a password: it is refused without being echoed.
    let shown = match text.split_once("://") {
        Some((scheme, _)) if text.contains('@') => format!("{}://...", printable(scheme)),
        _ => printable(text),
    };
    let malformed = |reason: &str| LocationError::Malformed { url: shown.clone(), reason: reason.to_string() };
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(malformed("not a URL"));
    };
    if text.chars().any(|c| c.is_control() || c.is_whitespace() || matches!(c, '\\' | '?' | '#' | '@' | '%')) {
        return Err(malformed("a location may not hold spaces, control characters, '\\', '?', '#', '@' or '%'"));
    }
    let (store, path) = match scheme {
        "s3" => {
            let (endpoint, path) = split_endpoint(rest).map_err(|r| malformed(&r))?;
            (Store::S3 { endpoint }, path)
        }
        "gs" => (Store::Gcs, rest),
        "as" => {
            let (account, path) = rest.split_once('/').unwrap_or((rest, ""));
            check_name(account, 3, 24, |c| c.is_ascii_lowercase() || c.is_ascii_digit())
                .map_err(|r| malformed(&format!("storage account: {r}")))?;
            (Store::Azure { account: account.to_string() }, path)
        }
        other => return Err(LocationError::UnknownScheme { url: shown, scheme: printable(other) }),
    };
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    let what = if matches!(store, Store::Azure { .. }) { "container" } else { "bucket" };
    check_name(bucket, 3, 63, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'))
        .map_err(|r| malformed(&format!("{what}: {r}")))?;
    let prefix = prefix.trim_end_matches('/');
    if !prefix.is_empty() && prefix.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(malformed("the path may not hold empty, '.' or '..' segments"));
    }
    Ok(Location { url: text.to_string(), store, bucket: bucket.to_string(), prefix: prefix.to_string() })
}

/// `http://HOST[:PORT]/rest` -> the endpoint and the rest; Triton's `HOST:PORT/rest` is
/// `http://HOST:PORT` (a bucket name holds no `:`); anything else is a plain bucket path.
fn split_endpoint(rest: &str) -> Result<(Option<String>, &str), String> {
    let Some((scheme, after)) = rest.split_once("://") else {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains(':') {
            let (endpoint, _) = split_endpoint(&format!("http://{authority}"))?;
            return Ok((endpoint, path));
        }
        return Ok((None, rest));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("unknown endpoint scheme '{}' (http:// or https://)", printable(scheme)));
    }
    let (authority, path) = after.split_once('/').unwrap_or((after, ""));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let host_ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !host_ok {
        return Err("the endpoint's host is missing or malformed".to_string());
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!("the endpoint's port '{}' is not a port number", printable(port)));
    }
    Ok((Some(format!("{scheme}://{authority}")), path))
}

fn check_name(name: &str, min: usize, max: usize, allowed: impl Fn(char) -> bool) -> Result<(), String> {
    if name.is_empty() {
        return Err("missing".to_string());
    }
    if name.len() < min || name.len() > max {
        return Err(format!("'{}' must be {min} to {max} characters", printable(name)));
    }
    if !name.chars().all(allowed) || name.starts_with(['-', '.']) {
        return Err(format!("'{}' holds characters a name of this store cannot", printable(name)));
    }
    Ok(())
}

/// Text safe to echo in an error: control characters escaped, at most 200 characters.
fn printable(text: &str) -> String {
    let escaped: String = text.chars().flat_map(char::escape_debug).collect();
    if escaped.chars().count() > 200 { escaped.chars().take(200).chain("...".chars()).collect() } else { escaped }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_forms_parse() {
        let s3 = parse("s3://models-bucket/path/to/repo/").unwrap();
        assert_eq!(
            (s3.store, s3.bucket.as_str(), s3.prefix.as_str()),
            (Store::S3 { endpoint: None }, "models-bucket", "path/to/repo")
        );
        let minio = parse("s3://http://127.0.0.1:9000/bucket/repo").unwrap();
        assert_eq!(minio.store, Store::S3 { endpoint: Some("http://127.0.0.1:9000".into()) });
        assert_eq!((minio.bucket.as_str(), minio.prefix.as_str()), ("bucket", "repo"));
        let bare = parse("s3://127.0.0.1:9000/bucket/repo").unwrap();
        assert_eq!(bare.store, Store::S3 { endpoint: Some("http://127.0.0.1:9000".into()) });
        assert_eq!((bare.bucket.as_str(), bare.prefix.as_str()), ("bucket", "repo"));
        let https = parse("s3://https://s3.example.com/bucket").unwrap();
        assert_eq!((https.store, https.prefix.as_str()), (Store::S3 { endpoint: Some("https://s3.example.com".into()) }, ""));
        let gs = parse("gs://my_bucket/models").unwrap();
        assert_eq!((gs.store, gs.bucket.as_str(), gs.prefix.as_str()), (Store::Gcs, "my_bucket", "models"));
        let azure = parse("as://account1/container/a/b").unwrap();
        assert_eq!(azure.store, Store::Azure { account: "account1".into() });
        assert_eq!((azure.bucket.as_str(), azure.prefix.as_str()), ("container", "a/b"));
    }

    #[test]
    fn urls_are_told_from_folders() {
        assert!(is_url("s3://b/p") && is_url("ftp://x") && is_url("hdfs://x"));
        assert!(!is_url("/models") && !is_url("models") && !is_url("./a://b"));
    }

    #[test]
    fn unknown_schemes_and_malformed_urls_are_refused() {
        assert!(matches!(parse("ftp://host/x"), Err(LocationError::UnknownScheme { scheme, .. }) if scheme == "ftp"));
        for bad in [
            "s3://",
            "s3:///path",
            "s3://ab",
            "s3://Bucket/x",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "s3://bucket/./a",
            "s3://bucket\\x",
            "s3://bucket/a\0b",
            "s3://key:secret@bucket/x",
            "s3://http://user:pw@host:9000/bucket",
            "s3://http://host:notaport/bucket",
            "s3://http://host:0/bucket",
            "s3://host:99999/bucket",
            "s3://:9000/bucket",
            "s3://ftp://host/bucket",
            "s3://http:///bucket",
            "s3://bucket/a?x=1",
            "s3://bucket/a b",
            "gs://-bucket/x",
            "as://account",
            "as://ACCOUNT/container",
            "as://account/",
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.starts_with("--model-repository '"), "{bad}: {error}");
            assert!(!error.contains('\0') && !error.contains("secret") && !error.contains("pw@"), "{bad}: {error}");
        }
    }

    #[test]
    fn errors_escape_what_they_echo() {
        let error = parse("zz\u{1b}[31m://x").unwrap_err().to_string();
        assert!(!error.contains('\u{1b}'), "{error}");
    }
}
