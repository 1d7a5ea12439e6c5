//! cxone-worker: consumes file jobs from RabbitMQ, encodes each file and executes a
//! Data Action with it (Genesys Cloud, NICE CXone, or the tutorial's API, by profile),
//! then publishes the outcome.
//!
//! One job flows through the modules in this order:
//!
//! | module | responsibility |
//! |---|---|
//! | [`config`] | one typed settings tree from flags and environment; secrets wrapped |
//! | [`job`] | the job message, its idempotency key, error kinds and failure decisions |
//! | [`source`] | a file reference -> bytes (`file://` inside `FILE_ROOTS`, …) |
//! | [`encode`] | sniff, validate, base64: bytes in, request body out |
//! | [`limits`] | the tenant's API limits: pacing, calls in flight, pauses, shared by the fleet |
//! | [`cxone`] | the API: shared token, execute and the meaning of each answer |
//! | [`budget`] | the byte budget: how much file content jobs hold at once |
//! | [`state`] | what a job carries between deliveries, trusted only when signed for it |
//! | [`storage`] | the external storage record of a succeeded job |
//! | [`outcome`] | what a job became: results and audit events |
//! | [`worker`] | one job from delivery to outcome, knowing nothing of AMQP |
//! | [`broker`] | RabbitMQ: topology, confirms, consumer, reconnection |
//! | [`admin`] | `/healthz`, `/readyz`, `/metrics` |
//! | [`telemetry`] | logs, traces and metric names |
//! | [`trace`] | a job's W3C trace context, kept whether spans are exported or not |
//! | [`text`] | times, durations and URLs as the worker writes them (passwords masked) |
//! | [`shutdown`] | the signal that starts the drain |
//! | [`ops`] | operator tooling: `enqueue` backfills, the DLQ (`dlq list/replay/purge`), `status` |
//! | [`commands`] | one file per subcommand |
//! | [`sim`] | the local CXone API simulator (`cxone-worker sim`) |
#![warn(unreachable_pub)]

pub mod admin;
pub mod broker;
pub mod budget;
pub mod commands;
pub mod config;
pub mod cxone;
pub mod encode;
pub mod job;
pub mod limits;
pub mod ops;
pub mod outcome;
pub mod shutdown;
pub mod sim;
pub mod source;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod text;
pub mod trace;
pub mod worker;
