//! One file per subcommand: each parses nothing itself and calls the library.

pub mod definitions;
pub mod dlq;
pub mod encode;
pub mod enqueue;
pub mod run;
pub mod status;
