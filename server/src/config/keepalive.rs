//! The gRPC port's HTTP/2 pings, under Triton's flag names: the keepalive pings the server
//! sends, and the policy on the pings a client sends (too many, too often, and the connection
//! gets a GOAWAY `too_many_pings` and is closed, as gRPC's own servers do).

use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "gRPC")]
pub struct KeepaliveArgs {
    /// Milliseconds between the keepalive pings the server sends on each connection; 0 sends
    /// none. Dead peers are also found by TCP keepalive (see --grpc-tcp-keepalive-time).
    #[arg(long, env = "TRITIUM_GRPC_KEEPALIVE_TIME", default_value_t = 7_200_000)]
    pub grpc_keepalive_time: u64,
    /// Milliseconds to wait for a keepalive ping's answer before closing the connection.
    #[arg(long, env = "TRITIUM_GRPC_KEEPALIVE_TIMEOUT", default_value_t = 20_000)]
    pub grpc_keepalive_timeout: u64,
    /// Let clients ping a connection with no call in flight as often as
    /// --grpc-http2-min-recv-ping-interval-without-data allows (otherwise once every 2 hours).
    #[arg(long, env = "TRITIUM_GRPC_KEEPALIVE_PERMIT_WITHOUT_CALLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub grpc_keepalive_permit_without_calls: bool,
    /// Keepalive pings the server sends after its last data or headers before it waits for more
    /// of either; 0 for no limit.
    #[arg(long, env = "TRITIUM_GRPC_HTTP2_MAX_PINGS_WITHOUT_DATA", default_value_t = 2)]
    pub grpc_http2_max_pings_without_data: u32,
    /// Milliseconds a client must leave between its pings while the server sends nothing; a
    /// ping sooner is a strike.
    #[arg(long, env = "TRITIUM_GRPC_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA", default_value_t = 300_000)]
    pub grpc_http2_min_recv_ping_interval_without_data: u64,
    /// Strikes a connection may take before it is sent GOAWAY `too_many_pings` and closed; 0
    /// for no limit.
    #[arg(long, env = "TRITIUM_GRPC_HTTP2_MAX_PING_STRIKES", default_value_t = 2)]
    pub grpc_http2_max_ping_strikes: u32,
}

/// The pings of one gRPC connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Between the server's keepalive pings; `None` sends none.
    pub time: Option<Duration>,
    /// For a keepalive ping's answer.
    pub timeout: Duration,
    pub max_pings_without_data: u32,
    pub permit_without_calls: bool,
    pub min_recv_ping_interval_without_data: Duration,
    pub max_ping_strikes: u32,
}

/// How long a client must wait between pings on a connection with no call, when
/// --grpc-keepalive-permit-without-calls is off (gRPC's value).
pub const IDLE_PING_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            time: Some(Duration::from_secs(7200)),
            timeout: Duration::from_secs(20),
            max_pings_without_data: 2,
            permit_without_calls: false,
            min_recv_ping_interval_without_data: Duration::from_secs(300),
            max_ping_strikes: 2,
        }
    }
}

impl KeepaliveArgs {
    pub fn config(&self) -> KeepaliveConfig {
        KeepaliveConfig {
            time: (self.grpc_keepalive_time > 0).then(|| Duration::from_millis(self.grpc_keepalive_time)),
            timeout: Duration::from_millis(self.grpc_keepalive_timeout),
            max_pings_without_data: self.grpc_http2_max_pings_without_data,
            permit_without_calls: self.grpc_keepalive_permit_without_calls,
            min_recv_ping_interval_without_data: Duration::from_millis(self.grpc_http2_min_recv_ping_interval_without_data),
            max_ping_strikes: self.grpc_http2_max_ping_strikes,
        }
    }
}
