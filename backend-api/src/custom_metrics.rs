//! Custom metrics a backend's models declare (Triton's `TRITONSERVER_MetricFamily` / `Metric`,
//! which the python backend's `pb_utils.MetricFamily` reaches): counters, gauges and histograms
//! in families, one series per label set, kept for the life of the server and rendered on its
//! metrics page after Triton's own families.
//!
//! A family is known by its name and a series by its family and labels: declaring either again
//! gives the same one (its values go on), as in Triton, where a metric dropped and made again
//! with the same labels keeps its value. The words of the errors are Triton's.

use std::collections::BTreeMap;
use std::fmt::Write;

use parking_lot::Mutex;

/// Families a server keeps at most, and series in each (a model making label sets without end
/// is refused, not the server's memory).
pub const MAX_FAMILIES: usize = 1024;
pub const MAX_SERIES: usize = 16384;
/// Buckets a histogram may have.
pub const MAX_BUCKETS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    /// pb_utils' number of the kind (`MetricFamily.COUNTER` ...).
    pub fn from_number(number: i64) -> Option<MetricKind> {
        match number {
            0 => Some(MetricKind::Counter),
            1 => Some(MetricKind::Gauge),
            2 => Some(MetricKind::Histogram),
            _ => None,
        }
    }

    fn triton_name(self) -> &'static str {
        match self {
            MetricKind::Counter => "TRITONSERVER_METRIC_KIND_COUNTER",
            MetricKind::Gauge => "TRITONSERVER_METRIC_KIND_GAUGE",
            MetricKind::Histogram => "TRITONSERVER_METRIC_KIND_HISTOGRAM",
        }
    }

    fn type_name(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// A series' labels, sorted by name.
pub type Labels = Vec<(String, String)>;

#[derive(Debug)]
enum Series {
    Value(f64),
    Histogram { bounds: Vec<f64>, counts: Vec<u64>, count: u64, sum: f64 },
}

#[derive(Debug)]
struct Family {
    description: String,
    kind: MetricKind,
    series: BTreeMap<Labels, Series>,
}

static FAMILIES: Mutex<BTreeMap<String, Family>> = Mutex::new(BTreeMap::new());

/// Whether `name` is a Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Declares a family (again: the same one, whatever its description; another kind is an error).
pub fn declare_family(name: &str, description: &str, kind: MetricKind) -> Result<(), String> {
    if !valid_name(name) {
        return Err("Invalid metric name".to_string());
    }
    let mut families = FAMILIES.lock();
    if let Some(family) = families.get(name) {
        return if family.kind == kind { Ok(()) } else { Err("Family name already exists with different type".to_string()) };
    }
    if families.len() >= MAX_FAMILIES {
        return Err(format!("too many metric families (at most {MAX_FAMILIES})"));
    }
    families.insert(name.to_string(), Family { description: description.to_string(), kind, series: BTreeMap::new() });
    Ok(())
}

/// Declares a series of `family` (again: the same one, its values kept); a histogram's `buckets`
/// are its upper bounds.
pub fn declare_metric(family: &str, labels: Labels, buckets: Option<Vec<f64>>) -> Result<(), String> {
    let mut families = FAMILIES.lock();
    let family = families.get_mut(family).ok_or_else(|| format!("unknown metric family '{family}'"))?;
    for (name, _) in &labels {
        if !valid_name(name) || name.starts_with("__") || (family.kind == MetricKind::Histogram && name == "le") {
            return Err(format!("Invalid label name '{name}'"));
        }
    }
    if family.series.contains_key(&labels) {
        return Ok(());
    }
    if family.series.len() >= MAX_SERIES {
        return Err(format!("too many metrics in one family (at most {MAX_SERIES})"));
    }
    let series = match (family.kind, buckets) {
        (MetricKind::Histogram, Some(mut bounds)) => {
            if bounds.len() > MAX_BUCKETS || bounds.iter().any(|b| b.is_nan()) {
                return Err(format!("a histogram takes at most {MAX_BUCKETS} buckets, none of them NaN"));
            }
            bounds.sort_by(f64::total_cmp);
            bounds.dedup();
            Series::Histogram { counts: vec![0; bounds.len()], bounds, count: 0, sum: 0.0 }
        }
        (MetricKind::Histogram, None) => return Err("Missing required buckets.".to_string()),
        (_, Some(_)) => return Err("Unexpected buckets found.".to_string()),
        (_, None) => Series::Value(0.0),
    };
    family.series.insert(labels, series);
    Ok(())
}

/// What can be done to a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operation {
    Increment(f64),
    Set(f64),
    Observe(f64),
    Value,
}

/// Applies `operation` to a series declared before; the series' value for [`Operation::Value`].
pub fn apply(family: &str, labels: &Labels, operation: Operation) -> Result<f64, String> {
    let mut families = FAMILIES.lock();
    let family = families.get_mut(family).ok_or_else(|| format!("unknown metric family '{family}'"))?;
    let kind = family.kind;
    let series = family.series.get_mut(labels).ok_or("unknown metric")?;
    let unsupported = |what: &str| Err(format!("{} does not support {what}", kind.triton_name()));
    match (series, operation) {
        (Series::Value(value), Operation::Increment(by)) => {
            if kind == MetricKind::Counter && by < 0.0 {
                return Err(format!("{} can only be incremented monotonically by non-negative values.", kind.triton_name()));
            }
            *value += by;
            Ok(*value)
        }
        (Series::Value(value), Operation::Set(to)) if kind == MetricKind::Gauge => {
            *value = to;
            Ok(to)
        }
        (Series::Value(value), Operation::Value) => Ok(*value),
        (Series::Histogram { bounds, counts, count, sum }, Operation::Observe(seen)) => {
            for (bound, slot) in bounds.iter().zip(counts.iter_mut()) {
                if seen <= *bound {
                    *slot += 1;
                }
            }
            *count += 1;
            *sum += seen;
            Ok(seen)
        }
        (_, Operation::Increment(_)) => unsupported("Increment"),
        (_, Operation::Set(_)) => unsupported("Set"),
        (_, Operation::Observe(_)) => unsupported("Observe"),
        (_, Operation::Value) => unsupported("Value"),
    }
}

/// Every family, in the Prometheus text format (Triton's: labels sorted by name, a histogram's
/// `le` last; `_count`, `_sum`, then the buckets).
pub fn render() -> String {
    let families = FAMILIES.lock();
    let mut text = String::new();
    for (name, family) in families.iter() {
        let _ = writeln!(text, "# HELP {name} {}", escape_help(&family.description));
        let _ = writeln!(text, "# TYPE {name} {}", family.kind.type_name());
        for (labels, series) in &family.series {
            match series {
                Series::Value(value) => {
                    let _ = writeln!(text, "{name}{} {}", label_text(labels, None), number(*value));
                }
                Series::Histogram { bounds, counts, count, sum } => {
                    let plain = label_text(labels, None);
                    let _ = writeln!(text, "{name}_count{plain} {count}");
                    let _ = writeln!(text, "{name}_sum{plain} {}", number(*sum));
                    for (bound, slot) in bounds.iter().zip(counts) {
                        let _ = writeln!(text, "{name}_bucket{} {slot}", label_text(labels, Some(&number(*bound))));
                    }
                    let _ = writeln!(text, "{name}_bucket{} {count}", label_text(labels, Some("+Inf")));
                }
            }
        }
    }
    text
}

fn label_text(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A value as Prometheus' C++ client prints it: up to 16 significant digits, the shortest of
/// fixed and exponent notation (as C's `%.16g`), `+Inf`, `-Inf` and `NaN` by name.
pub fn number(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let scientific = format!("{value:.15e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if !(-4..16).contains(&exponent) {
        let mantissa = trim_fraction(mantissa);
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs());
    }
    let decimals = usize::try_from(15 - exponent).unwrap_or(0);
    trim_fraction(&format!("{value:.decimals$}")).to_string()
}

fn trim_fraction(text: &str) -> &str {
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn numbers_print_as_prometheus_prints_them() {
        for (value, text) in [(0.0, "0"), (2.5, "2.5"), (13.5, "13.5"), (1.0, "1"), (1e20, "1e+20"), (0.1 + 0.2, "0.3")] {
            assert_eq!(number(value), text, "{value}");
        }
        assert_eq!(number(0.00001), "1e-05");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }

    #[test]
    fn series_keep_their_values_and_refuse_what_their_kind_cannot_do() {
        declare_family("tritium_test_counter", "c", MetricKind::Counter).expect("declared");
        assert!(declare_family("tritium_test_counter", "other words", MetricKind::Counter).is_ok());
        assert_eq!(
            declare_family("tritium_test_counter", "c", MetricKind::Gauge).err().as_deref(),
            Some("Family name already exists with different type")
        );
        assert_eq!(declare_family("a name", "c", MetricKind::Gauge).err().as_deref(), Some("Invalid metric name"));
        let l = labels(&[("model", "m")]);
        declare_metric("tritium_test_counter", l.clone(), None).expect("series");
        assert_eq!(apply("tritium_test_counter", &l, Operation::Increment(2.0)), Ok(2.0));
        declare_metric("tritium_test_counter", l.clone(), None).expect("the same series");
        assert_eq!(apply("tritium_test_counter", &l, Operation::Value), Ok(2.0));
        assert!(apply("tritium_test_counter", &l, Operation::Increment(-1.0)).is_err_and(|e| e.contains("non-negative")));
        assert_eq!(
            apply("tritium_test_counter", &l, Operation::Set(1.0)).err().as_deref(),
            Some("TRITONSERVER_METRIC_KIND_COUNTER does not support Set")
        );
        assert_eq!(
            declare_metric("tritium_test_counter", labels(&[("b", "x")]), Some(vec![1.0])).err().as_deref(),
            Some("Unexpected buckets found.")
        );
    }

    #[test]
    fn a_histogram_renders_count_sum_and_cumulative_buckets() {
        declare_family("tritium_test_histogram", "h", MetricKind::Histogram).expect("declared");
        let l = labels(&[("model", "m")]);
        assert_eq!(declare_metric("tritium_test_histogram", l.clone(), None).err().as_deref(), Some("Missing required buckets."));
        declare_metric("tritium_test_histogram", l.clone(), Some(vec![5.0, 1.0])).expect("series");
        for seen in [0.5, 3.0, 10.0] {
            apply("tritium_test_histogram", &l, Operation::Observe(seen)).expect("observed");
        }
        let text = render();
        let ours: Vec<&str> = text.lines().filter(|l| l.contains("tritium_test_histogram")).collect();
        assert_eq!(
            ours,
            [
                "# HELP tritium_test_histogram h",
                "# TYPE tritium_test_histogram histogram",
                "tritium_test_histogram_count{model=\"m\"} 3",
                "tritium_test_histogram_sum{model=\"m\"} 13.5",
                "tritium_test_histogram_bucket{model=\"m\",le=\"1\"} 1",
                "tritium_test_histogram_bucket{model=\"m\",le=\"5\"} 2",
                "tritium_test_histogram_bucket{model=\"m\",le=\"+Inf\"} 3",
            ]
        );
    }
}
