//! `cxone-worker definitions`: the topology as a RabbitMQ definitions file, for
//! operators who pre-declare it (`rabbitmqctl import_definitions FILE`).

use clap::Args;

use crate::broker::topology::Topology;
use crate::config::{ConfigError, parse_retry_delays};

#[derive(Args, Debug, Clone)]
pub struct DefinitionsArgs {
    /// Prefix of every exchange and queue name.
    #[arg(long, env = "CXONE_QUEUE_PREFIX", default_value = "cxone")]
    pub queue_prefix: String,
    /// Waits between attempts; one retry queue per distinct delay.
    #[arg(long, env = "RETRY_DELAYS", default_value = "5s,30s,2m,10m")]
    pub retry_delays: String,
    /// Virtual host the definitions belong to.
    #[arg(long, default_value = "/")]
    pub vhost: String,
}

pub fn run(args: &DefinitionsArgs) -> Result<(), ConfigError> {
    let delays = parse_retry_delays(&args.retry_delays)?;
    let topology = Topology::new(&args.queue_prefix, &delays);
    // A JSON value always serializes.
    println!(
        "{}",
        serde_json::to_string_pretty(&topology.definitions(&args.vhost)).expect("json")
    );
    Ok(())
}
