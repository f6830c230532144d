//! Triton's rate limiter flags: `--rate-limit off|execution_count` and
//! `--rate-limit-resource NAME:COUNT[:DEVICE]` (repeatable), turned into the server's one
//! [`RateLimiter`], which every model's scheduler waits on (see `tritium_worker::rate_limiter`).

use std::sync::Arc;

use clap::{Args, ValueEnum};
use tritium_worker::{RateLimitMode, RateLimiter, ResourceLimit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum RateLimit {
    /// Ignore every instance group's `rate_limiter`: an execution starts when its instance is free.
    #[default]
    Off,
    /// An execution starts when its instance's resources are free; waiting ones go by priority
    /// times the executions their instance has run.
    #[value(name = "execution_count")]
    ExecutionCount,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Rate limiter")]
pub struct RateLimitArgs {
    /// Triton's rate limiter mode (case-insensitive).
    #[arg(long, env = "TRITIUM_RATE_LIMIT", value_enum, ignore_case = true, default_value = "off")]
    pub rate_limit: RateLimit,
    /// A resource's count, `<name>:<count>` on every device or `<name>:<count>:<device>` on one
    /// (a global resource takes the largest count given for its name); repeatable, or `;`-separated.
    /// Without it each resource has the largest count a loaded instance asks for; with it, a
    /// resource it does not name has none, and a model needing one fails to load (as Triton).
    #[arg(long = "rate-limit-resource", env = "TRITIUM_RATE_LIMIT_RESOURCE", value_delimiter = ';',
          value_parser = parse_resource)]
    pub rate_limit_resource: Vec<ResourceLimit>,
}

/// The largest count a resource may be given: model configs count in 32 bits.
const MAX_COUNT: u64 = u32::MAX as u64;

impl RateLimitArgs {
    /// The server's rate limiter. Resources given with the limiter off are refused: they would do
    /// nothing.
    pub fn limiter(&self) -> Result<Arc<RateLimiter>, String> {
        let mode = match self.rate_limit {
            RateLimit::Off => RateLimitMode::Off,
            RateLimit::ExecutionCount => RateLimitMode::ExecutionCount,
        };
        if mode == RateLimitMode::Off && !self.rate_limit_resource.is_empty() {
            return Err("--rate-limit-resource counts resources for --rate-limit execution_count; the rate limiter is off".into());
        }
        Ok(RateLimiter::new(mode, self.rate_limit_resource.clone()))
    }
}

/// `<name>:<count>` or `<name>:<count>:<device>`, in Triton's words when the form is wrong.
fn parse_resource(text: &str) -> Result<ResourceLimit, String> {
    let form = || {
        format!(
            "--rate-limit-resource option format is '<resource_name>:<count>:<device>' or '<resource_name>:<count>'. Got {text}"
        )
    };
    let parts: Vec<&str> = text.split(':').collect();
    let (name, count, device) = match parts.as_slice() {
        [name, count] => (*name, *count, None),
        [name, count, device] => (*name, *count, Some(*device)),
        _ => return Err(form()),
    };
    if name.is_empty() {
        return Err(format!("{}: the resource name is empty", form()));
    }
    let count = count
        .parse::<u64>()
        .ok()
        .filter(|&c| c <= MAX_COUNT)
        .ok_or_else(|| format!("{}: the count must be a whole number from 0 to {MAX_COUNT}", form()))?;
    let device = device
        .map(|d| {
            d.parse::<u16>().map(i32::from).map_err(|_| format!("{}: the device must be a device number (0 to 65535)", form()))
        })
        .transpose()?;
    Ok(ResourceLimit { name: name.to_string(), count, device })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        rate: RateLimitArgs,
    }

    fn parse(args: &[&str]) -> Result<RateLimitArgs, String> {
        Cli::try_parse_from(std::iter::once("tritium").chain(args.iter().copied())).map(|c| c.rate).map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_as_triton() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.limiter().unwrap().mode(), RateLimitMode::Off);
        let args = parse(&["--rate-limit", "EXECUTION_COUNT"]).unwrap();
        assert_eq!(args.limiter().unwrap().mode(), RateLimitMode::ExecutionCount);
    }

    #[test]
    fn resources_by_device_or_every_device() {
        let args =
            parse(&["--rate-limit=execution_count", "--rate-limit-resource", "R1:10", "--rate-limit-resource=R2:5:1"]).unwrap();
        assert_eq!(
            args.rate_limit_resource,
            vec![
                ResourceLimit { name: "R1".into(), count: 10, device: None },
                ResourceLimit { name: "R2".into(), count: 5, device: Some(1) },
            ]
        );
        assert_eq!(parse(&["--rate-limit-resource", "A:1;B:2"]).unwrap().rate_limit_resource.len(), 2);
    }

    #[test]
    fn bad_values_are_refused_naming_what_is_allowed() {
        let error = parse(&["--rate-limit", "xyz"]).unwrap_err();
        assert!(error.contains("invalid value 'xyz'") && error.contains("off") && error.contains("execution_count"), "{error}");
        for (bad, why) in [
            ("R:abc", "the count must be a whole number"),
            ("R:-1", "the count must be a whole number"),
            ("R:4294967296", "the count must be a whole number"),
            ("R:1:gpu0", "the device must be a device number"),
            ("R:1:-1", "the device must be a device number"),
            (":1", "the resource name is empty"),
            ("R", "format is '<resource_name>:<count>:<device>' or '<resource_name>:<count>'. Got R"),
            ("R:1:0:2", "Got R:1:0:2"),
        ] {
            let error = parse(&["--rate-limit=execution_count", "--rate-limit-resource", bad]).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn serve_and_worker_hand_the_limiter_to_their_repository() {
        use crate::config::{Cli, Command};
        let args = ["--rate-limit", "execution_count", "--rate-limit-resource", "R:2"];
        for command in ["serve", "worker"] {
            let cli = Cli::try_parse_from(["tritium", command].into_iter().chain(args)).unwrap();
            let repository = match cli.command {
                Command::Serve(serve) => serve.server_config().unwrap().repository,
                Command::Worker(worker) => worker.worker_config().unwrap().repository,
            };
            assert_eq!(repository.rate_limiter.mode(), RateLimitMode::ExecutionCount, "{command}");
        }
        let serve = Cli::try_parse_from(["tritium", "serve"]).unwrap();
        let Command::Serve(serve) = serve.command else { panic!("serve") };
        assert_eq!(serve.server_config().unwrap().repository.rate_limiter.mode(), RateLimitMode::Off);
    }

    #[test]
    fn the_config_dump_shows_both_flags() {
        use clap::CommandFactory;
        let cli = crate::config::Cli::command();
        let args = ["tritium", "serve", "--rate-limit", "execution_count", "--rate-limit-resource", "R:1;S:2:0"];
        let matches = cli.clone().try_get_matches_from(args).unwrap();
        let document = crate::config::dump::resolved_options(&cli, &matches);
        let options = &document["options"];
        assert_eq!(options["rate-limit"]["value"], "execution_count");
        assert_eq!(options["rate-limit"]["env"], "TRITIUM_RATE_LIMIT");
        assert_eq!(options["rate-limit-resource"]["value"], serde_json::json!(["R:1", "S:2:0"]));
    }

    #[test]
    fn resources_with_the_limiter_off_are_refused() {
        let error = parse(&["--rate-limit-resource", "R:1"]).unwrap().limiter().unwrap_err();
        assert!(error.contains("the rate limiter is off"), "{error}");
    }
}
