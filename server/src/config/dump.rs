//! `--dump-config-to`: every option of the command a process runs, with its resolved value and
//! where that value came from (command line, environment, default), written as JSON at start, so
//! an operator sees what a deployment really runs with. Secrets (options whose environment values
//! are hidden in `--help`, such as `--worker-token`) are written as `"<redacted>"`.

use std::path::Path;

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde_json::{Map, Value, json};

const REDACTED: &str = "<redacted>";

/// The options of the subcommand `matches` chose, resolved, as a JSON document.
pub fn resolved_options(cli: &clap::Command, matches: &ArgMatches) -> Value {
    let Some((name, sub_matches)) = matches.subcommand() else {
        return json!({ "tritium": { "version": env!("CARGO_PKG_VERSION") }, "options": {} });
    };
    let mut options = Map::new();
    if let Some(command) = cli.find_subcommand(name) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let source = match sub_matches.value_source(id) {
                Some(ValueSource::CommandLine) => "command_line",
                Some(ValueSource::EnvVariable) => "environment",
                Some(ValueSource::DefaultValue) => "default",
                Some(_) => "other",
                None => "unset",
            };
            let raw: Vec<String> = match sub_matches.try_get_raw(id) {
                Ok(Some(values)) => values.map(|value| value.to_string_lossy().into_owned()).collect(),
                _ => Vec::new(),
            };
            let value = match raw.as_slice() {
                [] => Value::Null,
                _ if arg.is_hide_env_values_set() => Value::String(REDACTED.into()),
                [one] if !takes_many(arg) => Value::String(one.clone()),
                many => Value::Array(many.iter().cloned().map(Value::String).collect()),
            };
            let mut option = Map::new();
            option.insert("value".into(), value);
            option.insert("source".into(), source.into());
            if let Some(env) = arg.get_env() {
                option.insert("env".into(), env.to_string_lossy().into_owned().into());
            }
            let key = arg.get_long().map_or_else(|| id.to_string(), str::to_string);
            options.insert(key, Value::Object(option));
        }
    }
    json!({ "tritium": { "version": env!("CARGO_PKG_VERSION"), "command": name }, "options": options })
}

/// Whether `arg` may hold several values (then its value is always a list).
fn takes_many(arg: &clap::Arg) -> bool {
    arg.get_num_args().is_some_and(|range| range.max_values() > 1)
        || matches!(arg.get_action(), clap::ArgAction::Append)
        || arg.get_value_delimiter().is_some()
}

/// Writes [`resolved_options`] to `path`.
pub fn dump(cli: &clap::Command, matches: &ArgMatches, path: &Path) -> Result<(), String> {
    let document = resolved_options(cli, matches);
    let text = serde_json::to_vec_pretty(&document).map_err(|e| format!("--dump-config-to: encoding: {e}"))?;
    std::fs::write(path, text).map_err(|e| format!("--dump-config-to: cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::config::Cli;

    fn options(args: &[&str]) -> Value {
        let cli = Cli::command();
        let matches = cli.clone().try_get_matches_from(args).expect("parse");
        resolved_options(&cli, &matches)
    }

    #[test]
    fn each_option_has_its_value_and_where_it_came_from() {
        let document =
            options(&["tritium", "serve", "--grpc-port", "9001", "--worker-token", "s3cret", "--etcd-endpoints", "a,b"]);
        assert_eq!(document["tritium"]["command"], "serve");
        let options = &document["options"];
        assert_eq!(options["grpc-port"], json!({"value": "9001", "source": "command_line", "env": "TRITIUM_GRPC_PORT"}));
        assert_eq!(options["exit-timeout-secs"]["value"], "30");
        assert_eq!(options["exit-timeout-secs"]["source"], "default");
        assert_eq!(options["etcd-endpoints"]["value"], json!(["a", "b"]));
        assert_eq!(options["model-repository"]["source"], "unset");
        assert_eq!(options["model-repository"]["value"], Value::Null);
        assert!(!document.to_string().contains("s3cret"), "the token is not written");
        assert_eq!(options["worker-token"]["value"], REDACTED);
        assert_eq!(options["worker-token"]["source"], "command_line");
        assert!(options.get("help").is_none());
    }

    #[test]
    fn a_worker_dumps_its_own_options() {
        let document = options(&["tritium", "worker", "--namespace", "blue"]);
        assert_eq!(document["tritium"]["command"], "worker");
        assert_eq!(document["options"]["namespace"]["value"], "blue");
        assert!(document["options"].get("http-port").is_none());
    }

    #[test]
    fn an_unwritable_path_is_a_clear_error() {
        let cli = Cli::command();
        let matches = cli.clone().try_get_matches_from(["tritium", "serve"]).expect("parse");
        let error = dump(&cli, &matches, Path::new("/nonexistent-dir/config.json")).expect_err("no such folder");
        assert!(error.starts_with("--dump-config-to: cannot write /nonexistent-dir/config.json"), "{error}");
    }
}
