//! The model lifecycle on the metrics port: `tritium_model_loads_total`,
//! `tritium_model_unloads_total{reason}` (explicit, poll, evicted) and `tritium_models_loaded`,
//! read from the repository's counts at scrape time. On-demand loading is watched with them: a
//! rising eviction count under steady traffic means the limits are too small for the working set.

use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};
use tritium_worker::ModelRepository;
use tritium_worker::registry::on_demand::UnloadCause;

use super::triton::{family, gauge};

fn counter(labels: Vec<LabelPair>, value: u64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value as f64);
    let mut metric = Metric::from_label(labels);
    metric.set_counter(counter);
    metric
}

fn reason(value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name("reason".to_string());
    pair.set_value(value.to_string());
    pair
}

pub(super) fn families(repository: &ModelRepository) -> Vec<MetricFamily> {
    let counts = repository.lifecycle_counts();
    let unloads =
        UnloadCause::ALL.iter().zip(counts.unloads).map(|(cause, value)| counter(vec![reason(cause.as_str())], value)).collect();
    vec![
        family(
            "tritium_model_loads_total",
            "Models loaded (or reloaded) since start",
            MetricType::COUNTER,
            vec![counter(Vec::new(), counts.loads)],
        ),
        family(
            "tritium_model_unloads_total",
            "Models unloaded since start, by reason: explicit (a client's unload), poll (gone from the repository), evicted (on-demand limits)",
            MetricType::COUNTER,
            unloads,
        ),
        family(
            "tritium_models_loaded",
            "Models loaded in this process now",
            MetricType::GAUGE,
            vec![gauge(Vec::new(), counts.loaded as f64)],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use tritium_worker::{RepositoryOptions, builtin_backends};

    use super::*;

    #[test]
    fn the_families_count_loads_unloads_and_loaded_models() {
        let repository = ModelRepository::open(RepositoryOptions::default(), builtin_backends()).expect("opens");
        let families = families(&repository);
        let mut text = String::new();
        prometheus::TextEncoder::new().encode_utf8(&families, &mut text).expect("encodes");
        let loaded = repository.local_models().len();
        assert!(loaded > 0);
        assert!(text.contains(&format!("tritium_model_loads_total {loaded}\n")), "{text}");
        assert!(text.contains(&format!("tritium_models_loaded {loaded}\n")), "{text}");
        for cause in ["explicit", "poll", "evicted"] {
            assert!(text.contains(&format!("tritium_model_unloads_total{{reason=\"{cause}\"}} 0\n")), "{text}");
        }
    }
}
