//! Dynamo's prompt-side prefill load model (`--router-prefill-load-model`) and the options of its
//! performance model (`--ais-*`, also spelt `--aic-*`). `aic`/`ais` decays a worker's oldest
//! prefill by a duration AI Configurator's simulator predicts from a performance database of the
//! exact GPU, backend and model; Tritium ships neither, so those values and every option that
//! only configures them stop the server at start saying what they need, instead of being
//! accepted and ignored.

use clap::Args;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Prefill load model (Dynamo's AI Configurator options)")]
pub struct PrefillLoadModelArgs {
    /// `none`: prompt tokens count as prefill load until the first token (the only model served).
    #[arg(long, env = "DYN_ROUTER_PREFILL_LOAD_MODEL", default_value = "none", value_parser = ["none", "aic", "ais"])]
    pub router_prefill_load_model: String,
    #[arg(long, env = "DYN_AIS_PERF_CONFIG")]
    pub ais_perf_config: Option<String>,
    #[arg(long, visible_alias = "aic-backend", env = "DYN_AIS_BACKEND")]
    pub ais_backend: Option<String>,
    #[arg(long, visible_alias = "aic-system", env = "DYN_AIS_SYSTEM")]
    pub ais_system: Option<String>,
    #[arg(long, visible_alias = "aic-backend-version", env = "DYN_AIS_BACKEND_VERSION")]
    pub ais_backend_version: Option<String>,
    #[arg(long, visible_alias = "aic-tp-size", env = "DYN_AIS_TP_SIZE")]
    pub ais_tp_size: Option<String>,
    #[arg(long, visible_alias = "aic-model-path", env = "DYN_AIS_MODEL_PATH")]
    pub ais_model_path: Option<String>,
    #[arg(long, visible_alias = "aic-moe-tp-size", env = "DYN_AIS_MOE_TP_SIZE")]
    pub ais_moe_tp_size: Option<String>,
    #[arg(long, visible_alias = "aic-moe-ep-size", env = "DYN_AIS_MOE_EP_SIZE")]
    pub ais_moe_ep_size: Option<String>,
    #[arg(long, visible_alias = "aic-attention-dp-size", env = "DYN_AIS_ATTENTION_DP_SIZE")]
    pub ais_attention_dp_size: Option<String>,
    #[arg(long, visible_alias = "aic-nextn", env = "DYN_AIS_NEXTN")]
    pub ais_nextn: Option<String>,
    #[arg(long, visible_alias = "aic-nextn-accept-rates", env = "DYN_AIS_NEXTN_ACCEPT_RATES")]
    pub ais_nextn_accept_rates: Option<String>,
    #[arg(long, visible_alias = "aic-mtp-seed", env = "DYN_AIS_MTP_SEED")]
    pub ais_mtp_seed: Option<String>,
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
        let given = [
            ("--ais-perf-config", &self.ais_perf_config),
            ("--ais-backend", &self.ais_backend),
            ("--ais-system", &self.ais_system),
            ("--ais-backend-version", &self.ais_backend_version),
            ("--ais-tp-size", &self.ais_tp_size),
            ("--ais-model-path", &self.ais_model_path),
            ("--ais-moe-tp-size", &self.ais_moe_tp_size),
            ("--ais-moe-ep-size", &self.ais_moe_ep_size),
            ("--ais-attention-dp-size", &self.ais_attention_dp_size),
            ("--ais-nextn", &self.ais_nextn),
            ("--ais-nextn-accept-rates", &self.ais_nextn_accept_rates),
            ("--ais-mtp-seed", &self.ais_mtp_seed),
        ];
        match given.iter().find(|(_, value)| value.is_some()) {
            Some((name, _)) => Err(format!("{name} configures --router-prefill-load-model ais, which needs {NEEDS}")),
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
