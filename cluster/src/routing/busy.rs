//! Admission control for language models (Dynamo's busy threshold): a worker whose KV cache is
//! fuller than its model's threshold (a fraction, `--active-decode-blocks-threshold` or
//! `POST /busy_threshold`) is busy. The router passes busy workers over; when every worker of the
//! model is busy the request is refused at once (UNAVAILABLE, HTTP 503 with `Retry-After`) instead
//! of joining a queue it would wait long in.

use std::collections::HashMap;
use parking_lot::RwLock;

/// The thresholds: one for every model (the flag) and one per model (set over HTTP).
#[derive(Debug, Default)]
pub struct BusyThresholds {
    default: Option<f64>,
    per_model: RwLock<HashMap<String, f64>>,
}

impl BusyThresholds {
    pub fn new(default: Option<f64>) -> BusyThresholds {
        BusyThresholds { default, per_model: RwLock::new(HashMap::new()) }
    }

    /// A threshold is a fraction of the KV cache in use, in (0, 1].
    pub fn check(value: f64) -> Result<f64, String> {
        match value > 0.0 && value <= 1.0 {
            true => Ok(value),
            false => Err(format!("a busy threshold is a fraction of the KV cache in (0, 1], got {value}")),
        }
    }

    /// `model`'s threshold, if it has one.
    pub fn get(&self, model: &str) -> Option<f64> {
        let per_model = self.per_model.read();
        per_model.get(model).copied().or(self.default)
    }

    /// Sets `model`'s own threshold, or (with `None`) removes it so the default applies again.
    pub fn set(&self, model: &str, threshold: Option<f64>) -> Result<Option<f64>, String> {
        let mut per_model = self.per_model.write();
        match threshold {
            Some(value) => {
                per_model.insert(model.to_owned(), Self::check(value)?);
            }
            None => {
                per_model.remove(model);
            }
        }
        drop(per_model);
        Ok(self.get(model))
    }

    /// The default and the per-model thresholds, sorted by model.
    pub fn all(&self) -> (Option<f64>, Vec<(String, f64)>) {
        let per_model = self.per_model.read();
        let mut list: Vec<(String, f64)> = per_model.iter().map(|(m, t)| (m.clone(), *t)).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        (self.default, list)
    }
}

/// A KV cache with `used` of `capacity` tokens is over `threshold` (one without a cache never is).
pub fn over(used: u64, capacity: u64, threshold: f64) -> bool {
    capacity > 0 && used as f64 / capacity as f64 > threshold
}

/// [`over`] of a (used, capacity) pair.
pub(crate) fn over_pair((used, capacity): (u64, u64), threshold: f64) -> bool {
    over(used, capacity, threshold)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn per_model_thresholds_override_the_default() {
        let busy = BusyThresholds::new(Some(0.9));
        assert_eq!(busy.get("m"), Some(0.9));
        assert_eq!(busy.set("m", Some(0.5)), Ok(Some(0.5)));
        assert_eq!((busy.get("m"), busy.get("other")), (Some(0.5), Some(0.9)));
        assert_eq!(busy.set("m", None), Ok(Some(0.9)));
        assert!(busy.set("m", Some(1.5)).is_err() && busy.set("m", Some(0.0)).is_err() && busy.set("m", Some(f64::NAN)).is_err());
        assert_eq!(BusyThresholds::new(None).get("m"), None);
        assert!(over(81, 100, 0.8) && !over(80, 100, 0.8) && !over(5, 0, 0.1));
    }
}
