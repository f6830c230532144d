//! Dynamo's prompt-side prefill load model (`--router-prefill-load-model`) and the options of its
//! performance model (`--ais-*`, also spelt `--aic-*`). `aic`/`ais` decays a worker's oldest
//! prefill by a duration AI Configurator's simulator predicts from a performance database of the
//! exact GPU, backend and model; Tritium ships neither, so those values and every option that
//! only configures them stop the server at start saying what they need, instead of being
//! accepted and ignored.

use clap::Args;

/// The performance model's options, each named once: its flag (with Dynamo's `--aic-*` spelling
/// where it has one) and variable become the struct field and the list `check` refuses.
macro_rules! performance_model_options {
    ($($field:ident: $flag:literal $(| $alias:literal)?, $env:literal;)*) => {
        #[derive(Debug, Clone, Args)]
        #[command(next_help_heading = "Prefill load model (Dynamo's AI Configurator options)")]
        pub struct PrefillLoadModelArgs {
            /// `none`: prompt tokens count as prefill load until the first token (the only model served).
            #[arg(long, env = "DYN_ROUTER_PREFILL_LOAD_MODEL", default_value = "none", value_parser = ["none", "aic", "ais"])]
            pub router_prefill_load_model: String,
            $(
                #[arg(long = $flag, $(visible_alias = $alias,)? env = $env)]
                pub $field: Option<String>,
            )*
        }

        impl PrefillLoadModelArgs {
            /// The first performance-model option given, as its flag.
            fn first_given(&self) -> Option<&'static str> {
                [$((concat!("--", $flag), self.$field.is_some())),*].into_iter().find(|(_, given)| *given).map(|(flag, _)| flag)
            }
        }
    };
}

performance_model_options! {
    ais_perf_config: "ais-perf-config", "DYN_AIS_PERF_CONFIG";
    ais_backend: "ais-backend" | "aic-backend", "DYN_AIS_BACKEND";
    ais_system: "ais-system" | "aic-system", "DYN_AIS_SYSTEM";
    ais_backend_version: "ais-backend-version" | "aic-backend-version", "DYN_AIS_BACKEND_VERSION";
    ais_tp_size: "ais-tp-size" | "aic-tp-size", "DYN_AIS_TP_SIZE";
    ais_model_path: "ais-model-path" | "aic-model-path", "DYN_AIS_MODEL_PATH";
    ais_moe_tp_size: "ais-moe-tp-size" | "aic-moe-tp-size", "DYN_AIS_MOE_TP_SIZE";
    ais_moe_ep_size: "ais-moe-ep-size" | "aic-moe-ep-size", "DYN_AIS_MOE_EP_SIZE";
    ais_attention_dp_size: "ais-attention-dp-size" | "aic-attention-dp-size", "DYN_AIS_ATTENTION_DP_SIZE";
    ais_nextn: "ais-nextn" | "aic-nextn", "DYN_AIS_NEXTN";
    ais_nextn_accept_rates: "ais-nextn-accept-rates" | "aic-nextn-accept-rates", "DYN_AIS_NEXTN_ACCEPT_RATES";
    ais_mtp_seed: "ais-mtp-seed" | "aic-mtp-seed", "DYN_AIS_MTP_SEED";
}

const NEEDS: &str = "AI Configurator's simulator and its performance database for the GPU, backend and model \
                     being served, which Tritium does not ship; use --router-prefill-load-model none \
                     (prompt tokens count until the first token)";

impl PrefillLoadModelArgs {
    /// Refuses what needs the simulator.
    pub fn check(&self) -> Result<(), String> {
        if self.router_prefill_load_model != "none" {
            return Err(format!("--router-prefill-load-model {} needs {NEEDS}", self.router_prefill_load_model));
        }
        match self.first_given() {
            Some(name) => Err(format!("{name} configures --router-prefill-load-model ais, which needs {NEEDS}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        model: PrefillLoadModelArgs,
    }

    fn check(args: &[&str]) -> Result<(), String> {
        Flags::try_parse_from([&["tritium"], args].concat()).map_err(|e| e.to_string())?.model.check()
    }

    #[test]
    fn none_is_served_and_the_simulator_and_its_options_are_refused_naming_what_they_need() {
        assert!(check(&[]).is_ok() && check(&["--router-prefill-load-model", "none"]).is_ok());
        for args in [&["--router-prefill-load-model", "aic"][..], &["--aic-backend", "vllm"], &["--ais-tp-size", "2"]] {
            let error = check(args).expect_err("refused");
            assert!(error.contains("performance database"), "{args:?}: {error}");
        }
        assert!(check(&["--aic-system", "h200_sxm"]).expect_err("refused").starts_with("--ais-system"));
    }
}
