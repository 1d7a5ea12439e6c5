//! The tenant's API limits as settings: whether the fleet shares them, and how many
//! calls may be in flight at once. (`RATE_LIMIT_PER_MINUTE` stays with the API's other
//! settings in `api.rs`, where `ApiSettings` has always carried it.)

use clap::Args;

use super::{ConfigError, choice, given, number_in};

const DEFAULT_SCOPE: &str = "fleet";
/// More calls in flight than any API allows one tenant; a typo such as `10000000` is
/// refused instead of meaning "no limit" in practice.
const MAX_CONCURRENT_CALLS_CEILING: u32 = 100_000;

/// Who shares `RATE_LIMIT_PER_MINUTE` and `MAX_CONCURRENT_CALLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// Every `run` process on the broker with the same `CXONE_QUEUE_PREFIX`, together,
    /// coordinated over `P.control`.
    Fleet,
    /// This process alone (v1): every replica may use the whole limit.
    Process,
}

#[derive(Args, Debug, Clone)]
pub struct CallLimitArgs {
    /// `fleet`: RATE_LIMIT_PER_MINUTE and MAX_CONCURRENT_CALLS hold for all `run`
    /// processes on this broker and prefix together; `process`: for each process alone.
    #[arg(long, env = "LIMIT_SCOPE", default_value = DEFAULT_SCOPE)]
    pub limit_scope: String,
    /// API calls in flight at once (0 = no limit; unset = the API profile's default).
    #[arg(long, env = "MAX_CONCURRENT_CALLS")]
    pub max_concurrent_calls: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallLimitSettings {
    pub scope: LimitScope,
    /// `None`: the API profile's default; `Some(0)`: no limit.
    pub max_concurrent_calls: Option<u32>,
}

impl CallLimitSettings {
    /// The calls in flight allowed at once, 0 for no limit. Unset means the API
    /// profile's default (Genesys: 15).
    pub fn concurrent_calls(&self, profile: super::ProfileName) -> u32 {
        self.max_concurrent_calls
            .unwrap_or_else(|| profile.default_max_concurrent_calls())
    }
}

impl CallLimitArgs {
    pub fn settings(&self) -> Result<CallLimitSettings, ConfigError> {
        let scope = choice(
            "LIMIT_SCOPE",
            &self.limit_scope,
            DEFAULT_SCOPE,
            &[
                ("fleet", LimitScope::Fleet),
                ("process", LimitScope::Process),
            ],
        )?;
        let max_concurrent_calls = given(&self.max_concurrent_calls)
            .map(|raw| {
                number_in(
                    "MAX_CONCURRENT_CALLS",
                    raw,
                    "",
                    0,
                    MAX_CONCURRENT_CALLS_CEILING,
                )
            })
            .transpose()?;
        Ok(CallLimitSettings {
            scope,
            max_concurrent_calls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::ProfileName;
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: CallLimitArgs,
    }

    fn parse(args: &[&str]) -> Result<CallLimitSettings, ConfigError> {
        let args = std::iter::once("test").chain(args.iter().copied());
        Cli::try_parse_from(args)
            .expect("clap accepts text")
            .limits
            .settings()
    }

    #[test]
    fn the_fleet_shares_the_limits_unless_told_otherwise() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.scope, LimitScope::Fleet);
        assert_eq!(s.max_concurrent_calls, None);
        assert_eq!(s.concurrent_calls(ProfileName::Seed), 0, "seed: none");
        assert_eq!(s.concurrent_calls(ProfileName::Genesys), 15, "genesys: 15");
        let s = parse(&["--limit-scope=PROCESS", "--max-concurrent-calls=4"]).unwrap();
        assert_eq!(s.scope, LimitScope::Process);
        assert_eq!(s.concurrent_calls(ProfileName::Genesys), 4, "set wins");
        // An empty variable counts as unset.
        let s = parse(&["--limit-scope=", "--max-concurrent-calls= "]).unwrap();
        assert_eq!((s.scope, s.max_concurrent_calls), (LimitScope::Fleet, None));
        assert_eq!(
            parse(&["--max-concurrent-calls=0"])
                .unwrap()
                .max_concurrent_calls,
            Some(0)
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        let error = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert_eq!(
            error(&["--limit-scope=cluster"]),
            "LIMIT_SCOPE: \"cluster\" is not one of fleet, process"
        );
        assert_eq!(
            error(&["--max-concurrent-calls=-1"]),
            "MAX_CONCURRENT_CALLS: \"-1\" is not a whole number"
        );
        assert_eq!(
            error(&["--max-concurrent-calls=100001"]),
            "MAX_CONCURRENT_CALLS: 100001 is out of range (0 to 100000)"
        );
    }
}
