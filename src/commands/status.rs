//! `cxone-worker status`: ready messages and consumers of the jobs queue, the retry
//! queues, the DLQ, results and audit, over AMQP alone; see [`crate::ops::status`].

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;

use crate::broker::topology::Topology;
use crate::config::{BrokerArgs, BrokerSettings, ConfigError, parse_retry_delays};
use crate::ops::status;
use crate::text::parse_duration;
use crate::text::{now, rfc3339};

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The worker's retry delays, which name its retry queues (P.retry.<delay>).
    #[arg(long, env = "RETRY_DELAYS", default_value = "5s,30s,2m,10m")]
    pub retry_delays: String,
    /// Print JSON (one object per refresh with --watch).
    #[arg(long)]
    pub json: bool,
    /// Refresh every INTERVAL (2s when given alone) until Ctrl-C.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s")]
    pub watch: Option<String>,
}

pub struct Status {
    pub broker: BrokerSettings,
    pub retry_delays: Vec<Duration>,
    pub json: bool,
    pub watch: Option<Duration>,
}

impl StatusArgs {
    pub fn settings(&self) -> Result<Status, ConfigError> {
        let retry_delays = parse_retry_delays(&self.retry_delays)?;
        let watch =
            match &self.watch {
                None => None,
                Some(raw) => Some(parse_duration(raw).filter(|d| !d.is_zero()).ok_or_else(
                    || ConfigError {
                        var: "--watch",
                        message: format!("{raw:?} is not a duration like 2s"),
                    },
                )?),
            };
        Ok(Status {
            broker: self.broker.settings()?,
            retry_delays,
            json: self.json,
            watch,
        })
    }
}

pub async fn run(cmd: Status) -> anyhow::Result<i32> {
    let topology = Topology::new(&cmd.broker.prefix, &cmd.retry_delays);
    let connection = crate::ops::connect(&cmd.broker, "status").await?;
    let stop = crate::ops::interrupt(None);
    // Redraw in place only for a person watching a terminal.
    let redraw = cmd.watch.is_some() && !cmd.json && std::io::stdout().is_terminal();
    loop {
        let snapshot = status::snapshot(&connection, &topology).await?;
        let at = rfc3339(now());
        let mut out = std::io::stdout().lock();
        if cmd.json {
            writeln!(out, "{}", status::to_json(&snapshot, &at))?;
        } else {
            if redraw {
                write!(out, "\x1b[H\x1b[2J")?;
            }
            if cmd.watch.is_some() {
                writeln!(out, "{at}  prefix {}  (Ctrl-C to stop)", topology.prefix())?;
            }
            write!(out, "{}", status::to_table(&snapshot))?;
            if cmd.watch.is_some() && !redraw {
                writeln!(out)?;
            }
        }
        out.flush()?;
        drop(out);
        let Some(every) = cmd.watch else { break };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => break,
        }
    }
    crate::broker::close(&connection, "done").await;
    Ok(0)
}
