//! The host gauges Triton reports: CPU utilization (the share of time not idle since the last
//! sample, 0 to 1, from `/proc/stat`) and memory total and used (`MemTotal` and `MemTotal -
//! MemAvailable` from `/proc/meminfo`).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::proto::{MetricFamily, MetricType};

use super::triton::{family, gauge};

/// The latest sample, and the CPU counters it was taken from.
#[derive(Debug, Default)]
pub struct CpuSampler {
    utilization_bits: AtomicU64,
    memory_total: AtomicU64,
    memory_used: AtomicU64,
    /// (busy, total) jiffies at the last sample.
    last: Mutex<Option<(u64, u64)>>,
}

/// (busy, total) jiffies from `/proc/stat`'s first line.
fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied()? + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// (total, used) bytes from `/proc/meminfo`.
fn memory(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:").unwrap_or(0);
    Some((total, total.saturating_sub(available)))
}

impl CpuSampler {
    pub fn new() -> CpuSampler {
        let sampler = CpuSampler::default();
        sampler.sample();
        sampler
    }

    /// Reads the host's counters once.
    pub fn sample(&self) {
        if let Some(now) = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(cpu_times) {
            let mut last = self.last.lock();
            if let Some((busy, total)) = *last {
                let (busy, total) = (now.0.saturating_sub(busy), now.1.saturating_sub(total));
                if total > 0 {
                    let share = busy as f64 / total as f64;
                    self.utilization_bits.store(share.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
                }
            }
            *last = Some(now);
        }
        if let Some((total, used)) = std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(memory) {
            self.memory_total.store(total, Ordering::Relaxed);
            self.memory_used.store(used, Ordering::Relaxed);
        }
    }

    pub fn families(&self) -> Vec<MetricFamily> {
        let utilization = f64::from_bits(self.utilization_bits.load(Ordering::Relaxed));
        vec![
            family(
                "nv_cpu_utilization",
                "Share of the host's CPU time not idle over the last sampling interval (0 to 1)",
                MetricType::GAUGE,
                vec![gauge(Vec::new(), utilization)],
            ),
            family(
                "nv_cpu_memory_total_bytes",
                "The host's memory, in bytes",
                MetricType::GAUGE,
                vec![gauge(Vec::new(), self.memory_total.load(Ordering::Relaxed) as f64)],
            ),
            family(
                "nv_cpu_memory_used_bytes",
                "The host's memory in use (total less available), in bytes",
                MetricType::GAUGE,
                vec![gauge(Vec::new(), self.memory_used.load(Ordering::Relaxed) as f64)],
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_stat_and_meminfo() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(cpu_times(stat), Some((150, 1000)));
        assert_eq!(cpu_times("intr 1 2"), None);
        let meminfo = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(memory(meminfo), Some((24_576_000 * 1024, 4_576_000 * 1024)));
    }

    #[test]
    fn samples_this_host() {
        let sampler = CpuSampler::new();
        sampler.sample();
        let families = sampler.families();
        assert_eq!(families.len(), 3);
        assert!(sampler.memory_total.load(Ordering::Relaxed) > 0);
        let utilization = families[0].get_metric()[0].get_gauge().get_value();
        assert!((0.0..=1.0).contains(&utilization), "{utilization}");
    }
}
