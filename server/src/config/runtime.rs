//! The async runtime's size, read from the variables Dynamo's runtime reads
//! (`DYN_RUNTIME_NUM_WORKER_THREADS`, `DYN_RUNTIME_MAX_BLOCKING_THREADS`), so a Dynamo
//! deployment's sizing carries over to `tritium serve` and `tritium worker` unchanged.

use clap::Args;

/// Most threads either pool may be given: far past any core count, short of what exhausts a
/// process's thread limit (a typo of 100,000 threads would).
pub const MAX_RUNTIME_THREADS: u16 = 4096;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Runtime")]
pub struct RuntimeArgs {
    /// Threads that serve requests (the async runtime's workers). Default: one per available
    /// core, which measured best (grpc_bench; on 2 cores beside its workers, a frontend on one
    /// thread spent the same CPU per request, within noise, and served fewer requests).
    #[arg(long, env = "DYN_RUNTIME_NUM_WORKER_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_RUNTIME_THREADS)))]
    pub num_worker_threads: Option<u16>,
    /// Most threads kept for blocking work at once (model loads, file reads, tokenizing long
    /// prompts); more such work waits for one of them.
    #[arg(long, env = "DYN_RUNTIME_MAX_BLOCKING_THREADS", default_value_t = 512,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_RUNTIME_THREADS)))]
    pub max_blocking_threads: u16,
}

impl RuntimeArgs {
    /// The runtime these options describe.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = self.num_worker_threads.map_or(cores, usize::from);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .max_blocking_threads(usize::from(self.max_blocking_threads))
            .enable_all()
            .build()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::{Cli, Command};

    fn runtime_of(args: &[&str]) -> Result<super::RuntimeArgs, clap::Error> {
        let cli = Cli::parse_args(["tritium", "serve"].iter().chain(args))?;
        match cli.command {
            Command::Serve(serve) => Ok(serve.runtime),
            Command::Worker(_) => unreachable!("serve parsed as serve"),
        }
    }

    #[test]
    fn sizes_the_runtime_as_told() {
        let runtime = runtime_of(&["--num-worker-threads", "1", "--max-blocking-threads", "3"]).unwrap();
        assert_eq!((runtime.num_worker_threads, runtime.max_blocking_threads), (Some(1), 3));
        let built = runtime.build().unwrap();
        assert_eq!(built.metrics().num_workers(), 1);
        let defaults = runtime_of(&[]).unwrap();
        assert_eq!((defaults.num_worker_threads, defaults.max_blocking_threads), (None, 512));
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(defaults.build().unwrap().metrics().num_workers(), cores);
    }

    #[test]
    fn refuses_sizes_out_of_bounds() {
        for bad in [["--num-worker-threads", "0"], ["--num-worker-threads", "4097"], ["--max-blocking-threads", "0"]] {
            let error = runtime_of(&bad).unwrap_err().to_string();
            assert!(error.contains(bad[0]) && error.contains("not in 1..=4096"), "{error}");
        }
    }
}
