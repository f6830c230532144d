//! Router options that the others make inert: each one given (set away from its default) where
//! it cannot act is named at start with why, so no option a user gave is ignored without a word.

use tritium_cluster::routing::RouterMode;
use tritium_cluster::routing::sessions::{AffinityMode, DEFAULT_MAX_SESSIONS};

use super::router::RouterArgs;

impl RouterArgs {
    /// One sentence per option given that does nothing in this configuration.
    pub fn inert(&self) -> Vec<String> {
        let load_aware = self.load_aware && !self.no_load_aware;
        let kv_mode = load_aware || self.router_mode == RouterMode::Kv;
        let tracked = load_aware || (self.router_track_active_blocks && !self.no_router_track_active_blocks);
        let kv_events = self.router_kv_events && !self.no_router_kv_events && !load_aware;
        let mut inert = Vec::new();
        let affinity_shape = self.router_session_affinity_mode != AffinityMode::Hard
            || self.router_session_affinity_max_sessions != DEFAULT_MAX_SESSIONS;
        if self.router_session_affinity_ttl_secs.is_none() && affinity_shape {
            inert.push(
                "--router-session-affinity-mode and --router-session-affinity-max-sessions shape session affinity, \
                 which --router-session-affinity-ttl-secs turns on; without it they do nothing"
                    .into(),
            );
        }
        if !kv_mode {
            let scoring: Vec<&str> = [
                (self.kv_overlap_weight != 1.0, "--router-kv-overlap-score-credit"),
                (self.kv_temperature != 0.0, "--router-temperature"),
                (self.kv_load_weight != 1.0, "--kv-load-weight"),
                (self.router_track_output_blocks && !self.no_router_track_output_blocks, "--router-track-output-blocks"),
                (self.router_prefill_load_scale != 1.0, "--router-prefill-load-scale"),
            ]
            .into_iter()
            .filter_map(|(given, name)| given.then_some(name))
            .collect();
            if !scoring.is_empty() {
                inert.push(format!(
                    "{}: options of the kv scoring, used in --router-mode kv only; with --router-mode {} they do nothing",
                    scoring.join(", "),
                    self.router_mode.as_str()
                ));
            }
            return inert;
        }
        if !tracked {
            if self.router_track_output_blocks && !self.no_router_track_output_blocks {
                inert.push(
                    "--router-track-output-blocks grows the active-block load that --router-track-active-blocks \
                     tracks; without it, it does nothing"
                        .into(),
                );
            }
            if self.router_prefill_load_scale != 1.0 {
                inert.push(
                    "--router-prefill-load-scale weighs prefill work in the active-block price of \
                     --router-track-active-blocks; without it, it does nothing"
                        .into(),
                );
            }
        } else if self.kv_load_weight != 1.0 {
            inert.push(
                "--kv-load-weight weighs the reported load, which --router-track-active-blocks replaces with \
                 its own price; it does nothing here"
                    .into(),
            );
        }
        if !kv_events {
            if self.router_snapshot_threshold != 1_000_000 || (self.router_reset_states && !self.no_router_reset_states) {
                inert.push(
                    "--router-snapshot-threshold and --router-reset-states keep the index the workers' KV events \
                     build; with --no-router-kv-events (or --load-aware) there is none"
                        .into(),
                );
            }
        } else if self.router_ttl_secs != 120.0 {
            inert.push("--router-ttl-secs is how long a predicted block is held, with --no-router-kv-events only".into());
        }
        inert
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        router: RouterArgs,
    }

    fn inert(args: &[&str]) -> Vec<String> {
        Cli::try_parse_from(std::iter::once("tritium").chain(args.iter().copied())).unwrap().router.inert()
    }

    #[test]
    fn defaults_and_options_that_act_are_not_named() {
        assert!(inert(&[]).is_empty());
        assert!(inert(&["--router-mode", "kv", "--router-temperature", "0.5"]).is_empty());
        assert!(inert(&["--router-mode", "kv", "--router-track-active-blocks", "--router-track-output-blocks"]).is_empty());
        assert!(inert(&["--router-mode", "kv", "--no-router-kv-events", "--router-ttl-secs", "30"]).is_empty());
        assert!(inert(&["--router-session-affinity-ttl-secs", "60", "--router-session-affinity-mode", "soft"]).is_empty());
    }

    #[test]
    fn options_another_makes_inert_are_named_with_why() {
        let named = inert(&["--router-temperature", "0.5", "--router-prefill-load-scale", "2"]);
        assert_eq!(named.len(), 1);
        assert!(named[0].starts_with("--router-temperature, --router-prefill-load-scale: options of the kv scoring"));
        assert!(named[0].contains("--router-mode round-robin"), "{named:?}");
        let named = inert(&["--router-mode", "kv", "--no-router-track-active-blocks", "--router-track-output-blocks"]);
        assert!(named[0].starts_with("--router-track-output-blocks grows"), "{named:?}");
        let named = inert(&["--router-mode", "kv", "--no-router-kv-events", "--router-reset-states"]);
        assert!(named[0].contains("with --no-router-kv-events"), "{named:?}");
        let named = inert(&["--router-mode", "kv", "--router-ttl-secs", "30"]);
        assert!(named[0].starts_with("--router-ttl-secs"), "{named:?}");
        let named = inert(&["--router-session-affinity-mode", "soft"]);
        assert!(named[0].contains("which --router-session-affinity-ttl-secs turns on"), "{named:?}");
    }
}
