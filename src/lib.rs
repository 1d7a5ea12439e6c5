//! cxone-worker: consumes file jobs from RabbitMQ, encodes each file and executes a
//! NICE CXone Data Action with it, then publishes the outcome.
//!
//! The modules follow one job through the pipeline:
//!
//! | module | responsibility |
//! |---|---|
//! | [`config`] | one typed settings tree from flags and environment; secrets wrapped |
//! | [`sim`] | the local CXone API simulator (`cxone-worker sim`) |
#![warn(unreachable_pub)]

pub mod sim;
