//! Logging through `tracing`, with a level that the LogSettings RPC changes at run time.

use std::sync::Arc;
use parking_lot::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LoggingArgs;

/// Triton's log settings, as the LogSettings RPC reads and writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    pub info: bool,
    pub warning: bool,
    pub error: bool,
    pub verbose_level: u32,
    /// "default" or "ISO8601"; recorded and reported, the format itself is tracing's.
    pub format: String,
}

impl LogState {
    pub fn from_args(args: &LoggingArgs) -> LogState {
        LogState {
            info: args.log_info,
            warning: args.log_warning,
            error: args.log_error,
            verbose_level: args.log_verbose,
            format: "default".to_string(),
        }
    }

    /// The `tracing` filter these settings mean.
    pub fn directives(&self) -> String {
        let level = match self.verbose_level {
            0 if self.info => "info",
            0 if self.warning => "warn",
            0 if self.error => "error",
            0 => "off",
            1 => "debug",
            _ => "trace",
        };
        // Transport crates are chatty at debug; they follow only at trace.
        if self.verbose_level == 1 { format!("{level},h2=info,hyper=info,tower=info,tonic=info") } else { level.to_string() }
    }
}

/// The live log settings of one server, and the handle that applies them.
#[derive(Clone)]
pub struct LogControl {
    state: Arc<Mutex<LogState>>,
    handle: Option<reload::Handle<EnvFilter, Registry>>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl").field("state", &*self.state.lock()).finish()
    }
}

impl LogControl {
    /// Installs the process-wide subscriber (stderr) and returns its control.
    pub fn install(args: &LoggingArgs) -> LogControl {
        let state = LogState::from_args(args);
        let (filter, handle) = reload::Layer::new(EnvFilter::new(state.directives()));
        let installed = tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init()
            .is_ok();
        LogControl { state: Arc::new(Mutex::new(state)), handle: installed.then_some(handle) }
    }

    /// Settings that are tracked and reported but drive no subscriber (servers embedded in tests).
    pub fn detached(state: LogState) -> LogControl {
        LogControl { state: Arc::new(Mutex::new(state)), handle: None }
    }

    pub fn current(&self) -> LogState {
        self.state.lock().clone()
    }

    /// Applies new settings; the level changes for every log line from now on.
    pub fn apply(&self, next: LogState) -> Result<(), String> {
        if let Some(handle) = &self.handle {
            handle.reload(EnvFilter::new(next.directives())).map_err(|e| format!("failed to change the log level: {e}"))?;
        }
        *self.state.lock() = next;
        Ok(())
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_wins_over_severity_switches() {
        let mut state = LogState { info: true, warning: true, error: true, verbose_level: 0, format: "default".into() };
        assert_eq!(state.directives(), "info");
        state.info = false;
        assert_eq!(state.directives(), "warn");
        state.verbose_level = 2;
        assert_eq!(state.directives(), "trace");
    }
}
