//! Options read from more than one environment variable: Dynamo's `DYN_*` name is an option's
//! own variable where Dynamo has the option, and the `TRITIUM_*` name it had before (or the
//! variable Dynamo's runtime reads, such as `ETCD_ENDPOINTS`) still sets it. clap reads one
//! variable per option, so before parsing, each option whose own variable is unset is pointed at
//! the first of its other names that is set; `--dump-config-to` then names the variable the value
//! came from. A flag on the command line beats every variable.

use clap::Command;

/// (an option's own variable, the other variables that set it, in order of precedence).
pub const ENV_ALIASES: &[(&str, &[&str])] = &[
    // HTTP
    ("DYN_HTTP_HOST", &["TRITIUM_HTTP_ADDRESS"]),
    ("DYN_HTTP_PORT", &["TRITIUM_HTTP_PORT"]),
    ("TRITIUM_EXIT_TIMEOUT_SECS", &["DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS"]),
    // KServe gRPC and metrics
    ("TRITIUM_METRICS_PORT", &["DYN_GRPC_METRICS_PORT"]),
    // Router
    ("DYN_ROUTER_MODE", &["TRITIUM_ROUTER_MODE"]),
    ("DYN_MIGRATION_LIMIT", &["TRITIUM_MIGRATION_LIMIT"]),
    ("DYN_KV_CACHE_BLOCK_SIZE", &["TRITIUM_KV_BLOCK_SIZE"]),
    ("DYN_ROUTER_KV_OVERLAP_SCORE_CREDIT", &["TRITIUM_KV_OVERLAP_WEIGHT"]),
    ("DYN_ROUTER_TEMPERATURE", &["TRITIUM_KV_TEMPERATURE"]),
    // Discovery and events
    ("DYN_DISCOVERY_BACKEND", &["TRITIUM_DISCOVERY"]),
    ("DYN_NAMESPACE", &["TRITIUM_NAMESPACE"]),
    ("DYN_NAMESPACE_PREFIX", &["TRITIUM_NAMESPACE_PREFIX"]),
    ("TRITIUM_ETCD_ENDPOINTS", &["ETCD_ENDPOINTS"]),
    ("TRITIUM_DISCOVERY_DIR", &["DYN_FILE_KV"]),
    ("DYN_EVENT_PLANE", &["TRITIUM_EVENTS"]),
    ("TRITIUM_NATS_URL", &["NATS_SERVER"]),
    // Models
    ("DYN_MODEL_PATH", &["TRITIUM_MODEL_PATH"]),
    ("DYN_MODEL_NAME", &["TRITIUM_MODEL_NAME"]),
    ("TRITIUM_DISAGGREGATION_MODE", &["DYN_VLLM_DISAGGREGATION_MODE", "DYN_TRTLLM_DISAGGREGATION_MODE"]),
];

/// `command` with every subcommand's options pointed at the variable they are read from now:
/// their own when `is_set` says it is set (or none of the others is), else the first other one set.
pub fn with_env_aliases(mut command: Command, is_set: impl Fn(&str) -> bool) -> Command {
    let names: Vec<String> = command.get_subcommands().map(|sub| sub.get_name().to_string()).collect();
    for name in names {
        command = command.mut_subcommand(name, |mut sub| {
            let retargets: Vec<(String, String)> = sub
                .get_arguments()
                .filter_map(|arg| {
                    let own = arg.get_env()?.to_str()?;
                    if is_set(own) {
                        return None;
                    }
                    let listed = ENV_ALIASES.iter().find(|(primary, _)| *primary == own).map_or(&[][..], |(_, others)| *others);
                    if let Some(other) = listed.iter().find(|other| is_set(other)) {
                        return Some((arg.get_id().to_string(), (*other).to_string()));
                    }
                    // An option named by Dynamo's variable also answers to TRITIUM_<OPTION>.
                    let tritium = own.starts_with("DYN_").then(|| tritium_name(arg.get_long()?))??;
                    is_set(&tritium).then(|| (arg.get_id().to_string(), tritium))
                })
                .collect();
            for (id, variable) in retargets {
                // clap keeps `'static` names; a few per start, made once.
                let variable: &'static str = Box::leak(variable.into_boxed_str());
                sub = sub.mut_arg(id, |arg| arg.env(variable));
            }
            sub
        });
    }
    command
}

/// `TRITIUM_<OPTION>` for the option `--option`.
pub fn tritium_name(long: &str) -> Option<String> {
    (!long.is_empty()).then(|| format!("TRITIUM_{}", long.to_ascii_uppercase().replace('-', "_")))
}

/// Whether the process environment holds `name` (empty counts as set, as clap reads it).
pub fn process_has(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::config::{Cli, Command as Sub};

    #[test]
    fn every_alias_names_an_option_of_serve_or_worker() {
        let cli = Cli::command();
        let envs: Vec<String> = cli
            .get_subcommands()
            .flat_map(|sub| sub.get_arguments().filter_map(|arg| arg.get_env()?.to_str().map(str::to_string)))
            .collect();
        for (own, _) in ENV_ALIASES {
            assert!(envs.iter().any(|env| env == own), "{own} is no option's variable");
        }
    }

    #[test]
    fn an_options_own_variable_beats_its_aliases_and_the_command_line_beats_both() {
        let vars = |set: &'static [(&'static str, &'static str)]| {
            let cli = with_env_aliases(Cli::command(), |name| set.iter().any(|(n, _)| *n == name));
            // clap reads the real environment: point each option at a variable only this test sets.
            (cli, set)
        };
        let (cli, _) = vars(&[("TRITIUM_ROUTER_MODE", "kv")]);
        let serve = cli.find_subcommand("serve").expect("serve");
        let mode = serve.get_arguments().find(|arg| arg.get_id() == "router_mode").expect("router_mode");
        assert_eq!(mode.get_env().and_then(|e| e.to_str()), Some("TRITIUM_ROUTER_MODE"));
        let (cli, _) = vars(&[("TRITIUM_ROUTER_MODE", "kv"), ("DYN_ROUTER_MODE", "random")]);
        let serve = cli.find_subcommand("serve").expect("serve");
        let mode = serve.get_arguments().find(|arg| arg.get_id() == "router_mode").expect("router_mode");
        assert_eq!(mode.get_env().and_then(|e| e.to_str()), Some("DYN_ROUTER_MODE"));
        let matches = with_env_aliases(Cli::command(), |_| false)
            .try_get_matches_from(["tritium", "serve", "--router-mode", "random"])
            .expect("parses");
        let Sub::Serve(args) = Cli::from_arg_matches(&matches).expect("args").command else { panic!("serve") };
        assert_eq!(args.router.router_mode, tritium_cluster::routing::RouterMode::Random);
    }

    #[test]
    fn an_option_named_by_dynamos_variable_also_answers_to_its_tritium_name() {
        let cli = with_env_aliases(Cli::command(), |name| name == "TRITIUM_TLS_CLIENT_CA_CERT_PATH");
        let serve = cli.find_subcommand("serve").expect("serve");
        let ca = serve.get_arguments().find(|arg| arg.get_id() == "tls_client_ca_cert_path").expect("the option");
        assert_eq!(ca.get_env().and_then(|e| e.to_str()), Some("TRITIUM_TLS_CLIENT_CA_CERT_PATH"));
        let both = with_env_aliases(Cli::command(), |name| name.ends_with("TLS_CLIENT_CA_CERT_PATH"));
        let serve = both.find_subcommand("serve").expect("serve");
        let ca = serve.get_arguments().find(|arg| arg.get_id() == "tls_client_ca_cert_path").expect("the option");
        assert_eq!(ca.get_env().and_then(|e| e.to_str()), Some("DYN_TLS_CLIENT_CA_CERT_PATH"), "Dynamo's own name first");
        assert_eq!(tritium_name("router-mode").as_deref(), Some("TRITIUM_ROUTER_MODE"));
    }
}
