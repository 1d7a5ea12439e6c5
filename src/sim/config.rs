//! The simulator's knobs: each one a flag and a `SIM_*` variable, with the reference defaults.

use std::net::{IpAddr, Ipv4Addr};

// One constant per default, shared by the flags and `Default`, so the two cannot drift apart.
const DEFAULT_PORT: u16 = 18080;
const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const DEFAULT_CLIENT_ID: &str = "test-client";
const DEFAULT_CLIENT_SECRET: &str = "test-secret";
const DEFAULT_TOKEN_TTL: u64 = 3600;
const DEFAULT_RATE_WINDOW_MS: u64 = 60_000;
const DEFAULT_RETRY_AFTER: &str = "1";
const DEFAULT_MAX_BODY: usize = 64 * 1024 * 1024;

/// Settings of `cxone-worker sim`; the names and defaults follow the reference simulator
/// (`shared/conformance/sim.mjs`).
#[derive(clap::Args, Debug, Clone)]
pub struct SimConfig {
    /// Port to listen on; 0 picks any free port.
    #[arg(long, env = "SIM_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "SIM_HOST", default_value_t = DEFAULT_HOST)]
    pub host: IpAddr,
    /// The only OAuth client id accepted.
    #[arg(long, env = "SIM_CLIENT_ID", default_value = DEFAULT_CLIENT_ID)]
    pub client_id: String,
    /// The only OAuth client secret accepted.
    #[arg(long, env = "SIM_CLIENT_SECRET", default_value = DEFAULT_CLIENT_SECRET)]
    pub client_secret: String,
    /// Lifetime of issued tokens (`expires_in`), seconds.
    #[arg(long, env = "SIM_TOKEN_TTL", default_value_t = DEFAULT_TOKEN_TTL)]
    pub token_ttl: u64,
    /// Delay before each execute answer, milliseconds.
    #[arg(long, env = "SIM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability (0..1) that an execute answers 503.
    #[arg(long = "fail-5xx", env = "SIM_FAIL_5XX", default_value_t = 0.0)]
    pub fail_5xx: f64,
    /// The first N attempts of each idempotency key answer 503.
    #[arg(long, env = "SIM_FAIL_FIRST", default_value_t = 0)]
    pub fail_first: u32,
    /// Executes allowed per window before answering 429; 0 turns the limit off.
    #[arg(long, env = "SIM_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,
    /// Length of the fixed rate-limit window, milliseconds.
    #[arg(long, env = "SIM_RATE_WINDOW_MS", default_value_t = DEFAULT_RATE_WINDOW_MS)]
    pub rate_window_ms: u64,
    /// `Retry-After` of 429 answers, sent as given: seconds or an HTTP date.
    #[arg(long, env = "SIM_RETRY_AFTER", default_value = DEFAULT_RETRY_AFTER)]
    pub retry_after: String,
    /// Request bodies larger than this many bytes answer 413.
    #[arg(long, env = "SIM_MAX_BODY", default_value_t = DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// Record the SHA-256 of each decoded payload (true/false, 1/0).
    #[arg(long, env = "SIM_HASH", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub hash: bool,
}

impl Default for SimConfig {
    /// The flag defaults, except port 0: tests want a free port, not a fixed one.
    fn default() -> Self {
        Self {
            port: 0,
            host: DEFAULT_HOST,
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            token_ttl: DEFAULT_TOKEN_TTL,
            latency_ms: 0,
            fail_5xx: 0.0,
            fail_first: 0,
            rate_limit: 0,
            rate_window_ms: DEFAULT_RATE_WINDOW_MS,
            retry_after: DEFAULT_RETRY_AFTER.to_owned(),
            max_body: DEFAULT_MAX_BODY,
            hash: true,
        }
    }
}
