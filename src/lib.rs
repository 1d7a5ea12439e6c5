//! cxone-worker: consumes file jobs from RabbitMQ, encodes each file and executes a
//! NICE CXone Data Action with it, then publishes the outcome.
//!
//! One job flows through the modules in this order:
//!
//! | module | responsibility |
//! |---|---|
//! | [`config`] | one typed settings tree from flags and environment; secrets wrapped |
//! | [`job`] | the job message, its idempotency key, error kinds and failure decisions |
//! | [`source`] | a file reference -> bytes (`file://` inside `FILE_ROOTS`, …) |
//! | [`encode`] | sniff, validate, base64: bytes in, request body out |
//! | [`cxone`] | the API: shared token, pacing, execute and the meaning of each answer |
//! | [`telemetry`] | logs, traces and metric names |
//! | [`sim`] | the local CXone API simulator (`cxone-worker sim`) |
#![warn(unreachable_pub)]

pub mod config;
pub mod cxone;
pub mod encode;
pub mod job;
pub mod sim;
pub mod source;
pub mod telemetry;
