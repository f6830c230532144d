//! Triton's `--grpc-restricted-protocol=<protocols>:<header>=<value>`: the RPCs of the named
//! protocol groups answer only calls that carry the header with that value, so repository
//! control, log settings and shared memory can be kept for an operator's tools while inference
//! stays open. Checked in the transport, before the call reaches its handler.

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
];

/// One restriction: these protocol groups (and their methods) need `header: value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    groups: Vec<&'static str>,
    methods: Vec<&'static str>,
    header: http::HeaderName,
    value: String,
}

/// Every restriction of the server; empty (the default) restricts nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestrictedProtocols {
    rules: Vec<Rule>,
}

impl RestrictedProtocols {
    /// Parses Triton's flag values, e.g. `model-repository,logging:admin-key=s3cret`, given to
    /// `flag` (named in errors).
    pub fn parse(flag: &str, values: &[String]) -> Result<RestrictedProtocols, String> {
        let mut rules = Vec::new();
        for value in values.iter().filter(|v| !v.is_empty()) {
            let bad = |why: &str| format!("{flag} '{value}': {why}");
            let (groups, pair) = value.split_once(':').ok_or_else(|| bad("expected <protocols>:<header>=<value>"))?;
            let (header, expected) = pair.split_once('=').ok_or_else(|| bad("expected <header>=<value> after ':'"))?;
            let header = http::HeaderName::from_bytes(header.trim().to_ascii_lowercase().as_bytes())
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
            rules.push(Rule { groups: names, methods, header, value: expected.to_owned() });
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
                    return Err(format!("This protocol is restricted, expecting header '{}'", rule.header));
                }
            }
        }
        Ok(())
    }

    /// For the HTTP port: the header a request of `group` lacks (or carries with another value)
    /// when the group is restricted.
    pub fn missing_header(&self, group: &str, headers: &HeaderMap) -> Option<&http::HeaderName> {
        let rule = self.rules.iter().find(|rule| rule.groups.contains(&group))?;
        let given = headers.get(&rule.header).and_then(|v| v.to_str().ok());
        (given != Some(rule.value.as_str())).then_some(&rule.header)
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
        let restricted =
            RestrictedProtocols::parse("--grpc-restricted-protocol", &["model-repository,logging:Admin-Key=s3cret".into()])
                .expect("parses");
        assert_eq!(
            restricted.check("RepositoryModelLoad", &HeaderMap::new()),
            Err("This protocol is restricted, expecting header 'admin-key'".into())
        );
        assert!(restricted.check("LogSettings", &headers(&[("admin-key", "wrong")])).is_err());
        assert!(restricted.check("LogSettings", &headers(&[("admin-key", "s3cret")])).is_ok());
        assert!(restricted.check("ModelInfer", &HeaderMap::new()).is_ok());
        assert_eq!(restricted.missing_header("logging", &HeaderMap::new()).map(|h| h.as_str()), Some("admin-key"));
        assert_eq!(restricted.missing_header("logging", &headers(&[("admin-key", "s3cret")])), None);
        assert_eq!(restricted.missing_header("inference", &HeaderMap::new()), None);
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in ["model-repository", "model-repository:key", "nonsense:k=v", "logging:bad header=v"] {
            assert!(RestrictedProtocols::parse("--grpc-restricted-protocol", &[bad.into()]).is_err(), "{bad}");
        }
        assert!(RestrictedProtocols::parse("--grpc-restricted-protocol", &["logging:a=1".into(), "logging:b=2".into()]).is_err());
        assert!(RestrictedProtocols::parse("--grpc-restricted-protocol", &[]).expect("empty").is_empty());
    }
}
