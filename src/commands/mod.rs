//! One file per subcommand: each parses nothing itself and calls the library.

pub mod definitions;
pub mod encode;
pub mod run;
