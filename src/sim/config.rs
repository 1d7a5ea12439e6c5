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
/// The contract's default names of the two payload fields (v1's body).
pub(crate) const DEFAULT_PAYLOAD_FIELD: &str = "binaryPayload";
pub(crate) const DEFAULT_CONTENT_TYPE_FIELD: &str = "contentType";
const DEFAULT_ACCESS_KEY_ID: &str = "test-access-key";
const DEFAULT_ACCESS_KEY_SECRET: &str = "test-access-secret";
const DEFAULT_TENANT_ID: &str = "11eb0e5b-8f33-4c51-9b5d-0242ac110002";

/// Which vendor API the simulator speaks; see the module docs of `sim` for what each follows.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProfileName {
    /// The seed's invented API (v1), exactly as the reference `sim.mjs`.
    #[default]
    Seed,
    /// Genesys Cloud Data Actions.
    Genesys,
    /// NICE CXone authentication and discovery; execute as `seed`.
    Cxone,
}

/// `SIM_FAIL_CHUNK=I:N`: chunk index `index` of any upload answers 503 to the first `attempts`
/// attempts of its idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailChunk {
    pub index: u64,
    pub attempts: u64,
}

fn parse_fail_chunk(s: &str) -> Result<FailChunk, String> {
    let (index, attempts) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not INDEX:ATTEMPTS"))?;
    let number = |part: &str| {
        part.parse::<u64>()
            .map_err(|_| format!("{part:?} in {s:?} is not a whole number"))
    };
    Ok(FailChunk {
        index: number(index)?,
        attempts: number(attempts)?,
    })
}

/// Settings of `cxone-worker sim`; the names and defaults of the v1 knobs follow the reference
/// simulator (`shared/conformance/sim.mjs`).
#[derive(clap::Args, Debug, Clone)]
pub struct SimConfig {
    /// Port to listen on; 0 picks any free port.
    #[arg(long, env = "SIM_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "SIM_HOST", default_value_t = DEFAULT_HOST)]
    pub host: IpAddr,
    /// The API to speak: seed (v1), genesys (Genesys Cloud Data Actions) or cxone (NICE CXone
    /// authentication and discovery).
    #[arg(long, env = "SIM_PROFILE", value_enum, default_value_t = ProfileName::Seed)]
    pub profile: ProfileName,
    /// The only OAuth client id accepted.
    #[arg(long, env = "SIM_CLIENT_ID", default_value = DEFAULT_CLIENT_ID)]
    pub client_id: String,
    /// The only OAuth client secret accepted.
    #[arg(long, env = "SIM_CLIENT_SECRET", default_value = DEFAULT_CLIENT_SECRET)]
    pub client_secret: String,
    /// cxone: the only access key id accepted as the password grant's `username`.
    #[arg(long, env = "SIM_ACCESS_KEY_ID", default_value = DEFAULT_ACCESS_KEY_ID)]
    pub access_key_id: String,
    /// cxone: the only access key secret accepted as the password grant's `password`.
    #[arg(long, env = "SIM_ACCESS_KEY_SECRET", default_value = DEFAULT_ACCESS_KEY_SECRET)]
    pub access_key_secret: String,
    /// cxone: the tenant named by the `id_token` and known to the discovery document.
    #[arg(long, env = "SIM_TENANT_ID", default_value = DEFAULT_TENANT_ID)]
    pub tenant_id: String,
    /// Lifetime of issued tokens (`expires_in`), seconds, in every profile.
    #[arg(long, env = "SIM_TOKEN_TTL", default_value_t = DEFAULT_TOKEN_TTL)]
    pub token_ttl: u64,
    /// Name of the field that holds the base64 payload.
    #[arg(long, env = "SIM_PAYLOAD_FIELD", default_value = DEFAULT_PAYLOAD_FIELD)]
    pub payload_field: String,
    /// Name of the field that holds the payload's MIME type.
    #[arg(long, env = "SIM_CONTENT_TYPE_FIELD", default_value = DEFAULT_CONTENT_TYPE_FIELD)]
    pub content_type_field: String,
    /// genesys: pad each output so that its JSON is at least this many bytes (0 = no padding).
    #[arg(long, env = "SIM_OUTPUT_BYTES", default_value_t = 0)]
    pub output_bytes: usize,
    /// Delay before each execute answer, milliseconds.
    #[arg(long, env = "SIM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability (0..1) that an execute answers 503.
    #[arg(long = "fail-5xx", env = "SIM_FAIL_5XX", default_value_t = 0.0)]
    pub fail_5xx: f64,
    /// The first N attempts of each idempotency key answer 503.
    #[arg(long, env = "SIM_FAIL_FIRST", default_value_t = 0)]
    pub fail_first: u32,
    /// `I:N`: chunk index I of any upload answers 503 to the first N attempts of its key.
    #[arg(long, env = "SIM_FAIL_CHUNK", value_parser = parse_fail_chunk)]
    pub fail_chunk: Option<FailChunk>,
    /// Executes allowed per window before answering 429; 0 turns the limit off.
    #[arg(long, env = "SIM_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,
    /// genesys: send `inin-ratelimit-*` headers allowing N executes per window, and answer
    /// 429 past N; 0 turns them off.
    #[arg(long, env = "SIM_ININ_RATELIMIT", default_value_t = 0)]
    pub inin_ratelimit: u32,
    /// Length of the fixed rate-limit window, milliseconds.
    #[arg(long, env = "SIM_RATE_WINDOW_MS", default_value_t = DEFAULT_RATE_WINDOW_MS)]
    pub rate_window_ms: u64,
    /// `Retry-After` of 429 answers, sent as given: seconds or an HTTP date.
    #[arg(long, env = "SIM_RETRY_AFTER", default_value = DEFAULT_RETRY_AFTER)]
    pub retry_after: String,
    /// Request bodies larger than this many bytes answer 413.
    #[arg(long, env = "SIM_MAX_BODY", default_value_t = DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// Record the SHA-256 of each decoded payload (true/false, 1/0). Chunks are hashed anyway.
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
            profile: ProfileName::Seed,
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            access_key_id: DEFAULT_ACCESS_KEY_ID.to_owned(),
            access_key_secret: DEFAULT_ACCESS_KEY_SECRET.to_owned(),
            tenant_id: DEFAULT_TENANT_ID.to_owned(),
            token_ttl: DEFAULT_TOKEN_TTL,
            payload_field: DEFAULT_PAYLOAD_FIELD.to_owned(),
            content_type_field: DEFAULT_CONTENT_TYPE_FIELD.to_owned(),
            output_bytes: 0,
            latency_ms: 0,
            fail_5xx: 0.0,
            fail_first: 0,
            fail_chunk: None,
            rate_limit: 0,
            inin_ratelimit: 0,
            rate_window_ms: DEFAULT_RATE_WINDOW_MS,
            retry_after: DEFAULT_RETRY_AFTER.to_owned(),
            max_body: DEFAULT_MAX_BODY,
            hash: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_chunk_takes_index_colon_attempts() {
        assert_eq!(
            parse_fail_chunk("3:2"),
            Ok(FailChunk {
                index: 3,
                attempts: 2
            })
        );
        for bad in ["3", "3:", ":2", "a:2", "3:-1", "3:2:1"] {
            assert!(parse_fail_chunk(bad).is_err(), "{bad}");
        }
    }
}
