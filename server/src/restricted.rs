//! Triton's `--grpc-restricted-protocol=<protocols>:<key>=<value>` and
//! `--http-restricted-api=<apis>:<header>=<value>`: the calls of the named groups are answered
//! only when they carry the header with that value, so repository control, log settings and
//! shared memory can be kept for an operator's tools while inference stays open. On gRPC the
//! header is `triton-grpc-protocol-<key>`, as Triton names it. Checked before the call reaches
//! its handler.

use http::HeaderMap;

/// The protocol groups Triton names, with the RPCs of `inference.GRPCInferenceService` in each.
const GROUPS: &[(&str, &[&str])] = &[
    ("health", &["ServerLive", "ServerReady", "ModelReady"]),
    ("metadata", &["ServerMetadata", "ModelMetadata"]),
    ("inference", &["ModelInfer", "ModelStreamInfer"]),
    (
        "shared-memory",
        &[
            "SystemSharedMemoryStatus",
            "SystemSharedMemoryRegister",
            "SystemSharedMemoryUnregister",
            "CudaSharedMemoryStatus",
            "CudaSharedMemoryRegister",
            "CudaSharedMemoryUnregister",
        ],
    ),
    ("model-config", &["ModelConfig"]),
    ("model-repository", &["RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"]),
    ("statistics", &["ModelStatistics"]),
    ("trace", &["TraceSetting"]),
    ("logging", &["LogSettings"]),
    // Tritium's own: `POST /busy_threshold` (admission control) on the HTTP port; no gRPC call.
    ("admission", &["BusyThreshold"]),
    // `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter` on the HTTP port.
    ("lora", &["LoraAdapters"]),
];

/// One restriction: these protocol groups (and their methods) need `header: value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    groups: Vec<&'static str>,
    methods: Vec<&'static str>,
    header: http::HeaderName,
    /// The header as the flag wrote it, for the refusal's message.
    written: String,
    value: String,
}

/// The gRPC header of a restricted protocol's key, as Triton names it.
pub const GRPC_HEADER_PREFIX: &str = "triton-grpc-protocol-";

/// Every restriction of the server; empty (the default) restricts nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestrictedProtocols {
    rules: Vec<Rule>,
}

impl RestrictedProtocols {
    /// Parses Triton's flag values, e.g. `model-repository,logging:admin-key=s3cret`, given to
    /// `flag` (named in errors).
    /// `prefix` goes before the key to make the header (gRPC: [`GRPC_HEADER_PREFIX`]).
    pub fn parse(flag: &str, values: &[String], prefix: &str) -> Result<RestrictedProtocols, String> {
        let mut rules = Vec::new();
        for value in values.iter().filter(|v| !v.is_empty()) {
            let bad = |why: &str| format!("{flag} '{value}': {why}");
            let (groups, pair) = value.split_once(':').ok_or_else(|| bad("expected <protocols>:<header>=<value>"))?;
            let (header, expected) = pair.split_once('=').ok_or_else(|| bad("expected <header>=<value> after ':'"))?;
            let written = format!("{prefix}{}", header.trim());
            let header = http::HeaderName::from_bytes(written.to_ascii_lowercase().as_bytes())
                .map_err(|_| bad("the header name is not a valid HTTP header name"))?;
            let mut methods = Vec::new();
            let mut names = Vec::new();
            for group in groups.split(',').map(str::trim) {
                let (name, members) =
                    GROUPS.iter().find(|(name, _)| *name == group).ok_or_else(|| bad(&format!("unknown protocol '{group}'")))?;
                methods.extend_from_slice(members);
                names.push(*name);
            }
            if rules.iter().any(|rule: &Rule| rule.methods.iter().any(|m| methods.contains(m))) {
                return Err(bad("a protocol is restricted twice"));
            }
            rules.push(Rule { groups: names, methods, header, written, value: expected.to_owned() });
        }
        Ok(RestrictedProtocols { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// `Err` with Triton's message when `method` is restricted and `headers` lack the key.
    pub fn check(&self, method: &str, headers: &HeaderMap) -> Result<(), String> {
        for rule in &self.rules {
            if rule.methods.contains(&method) {
                let given = headers.get(&rule.header).and_then(|v| v.to_str().ok());
                if given != Some(rule.value.as_str()) {
                    return Err(format!("This protocol is restricted, expecting header '{}'", rule.written));
                }
            }
        }
        Ok(())
    }

    /// For the HTTP port: the header (as the flag wrote it) a request of `group` lacks, or
    /// carries with another value, when the group is restricted.
    pub fn missing_header(&self, group: &str, headers: &HeaderMap) -> Option<&str> {
        let rule = self.rules.iter().find(|rule| rule.groups.contains(&group))?;
        let given = headers.get(&rule.header).and_then(|v| v.to_str().ok());
        (given != Some(rule.value.as_str())).then_some(rule.written.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("value"));
        }
        map
    }

    #[test]
    fn a_restricted_group_needs_its_header_and_others_do_not() {
        let flag = "--grpc-restricted-protocol";
        let grpc = RestrictedProtocols::parse(flag, &["model-repository,logging:Admin-Key=s3cret".into()], GRPC_HEADER_PREFIX)
            .expect("parses");
        assert_eq!(
            grpc.check("RepositoryModelLoad", &HeaderMap::new()),
            Err("This protocol is restricted, expecting header 'triton-grpc-protocol-Admin-Key'".into())
        );
        assert!(grpc.check("LogSettings", &headers(&[("triton-grpc-protocol-admin-key", "wrong")])).is_err());
        assert!(grpc.check("LogSettings", &headers(&[("admin-key", "s3cret")])).is_err(), "the bare key is not the header");
        assert!(grpc.check("LogSettings", &headers(&[("triton-grpc-protocol-admin-key", "s3cret")])).is_ok());
        assert!(grpc.check("ModelInfer", &HeaderMap::new()).is_ok());

        let http = RestrictedProtocols::parse("--http-restricted-api", &["model-repository,logging:Admin-Key=s3cret".into()], "")
            .expect("parses");
        assert_eq!(http.missing_header("logging", &HeaderMap::new()), Some("Admin-Key"));
        assert_eq!(http.missing_header("logging", &headers(&[("admin-key", "s3cret")])), None);
        assert_eq!(http.missing_header("inference", &HeaderMap::new()), None);
    }

    #[test]
    fn bad_values_are_refused() {
        let parse = |values: &[String]| RestrictedProtocols::parse("--grpc-restricted-protocol", values, GRPC_HEADER_PREFIX);
        for bad in ["model-repository", "model-repository:key", "nonsense:k=v", "logging:bad header=v"] {
            assert!(parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse(&["logging:a=1".into(), "logging:b=2".into()]).is_err());
        assert!(parse(&[]).expect("empty").is_empty());
    }
}
