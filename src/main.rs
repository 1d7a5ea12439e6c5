//! The `cxone-worker` binary: parse the command line, start telemetry, dispatch.

use clap::{Parser, Subcommand};

use cxone_worker::commands::{definitions, dlq, encode, enqueue, run, status};
use cxone_worker::config::{ConfigError, RunArgs};
use cxone_worker::{config, telemetry};

#[derive(Parser)]
#[command(
    name = "cxone-worker",
    version,
    about = "Encode files from RabbitMQ jobs and execute NICE CXone Data Actions with them"
)]
struct Cli {
    /// Log format: json (one object per line) or text; level from RUST_LOG.
    #[arg(long, env = "LOG_FORMAT", default_value = "json", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume jobs until SIGTERM/SIGINT: declare the topology, execute, publish outcomes.
    Run(Box<RunArgs>),
    /// Validate and encode one file; print the request body `run` would send.
    Encode(encode::EncodeArgs),
    /// Run the local CXone API simulator (endpoints, faults and /__stats of the real API's stand-in).
    Sim(cxone_worker::sim::SimConfig),
    /// Print the topology as a RabbitMQ definitions file.
    Definitions(definitions::DefinitionsArgs),
    /// Publish jobs (files, a directory, or an NDJSON manifest) to P.jobs with publisher confirms.
    Enqueue(Box<enqueue::EnqueueArgs>),
    /// Inspect, replay or purge dead-lettered jobs (P.jobs.dlq).
    Dlq(dlq::DlqArgs),
    /// Ready messages and consumers of every queue of the topology.
    Status(status::StatusArgs),
}

/// A bad setting stops the program with one line naming the variable, exit code 2.
fn refuse(e: ConfigError) -> ! {
    eprintln!("cxone-worker: {e}");
    std::process::exit(2);
}

/// Ends an operator command with the status it chose, or 1 and one line for an error.
fn exit_with(outcome: anyhow::Result<i32>) -> ! {
    let code = outcome.unwrap_or_else(|e| {
        eprintln!("cxone-worker: {e:#}");
        1
    });
    std::process::exit(code);
}

/// glibc gives every thread that allocates its own arena and keeps what each one
/// frees: job buffers allocated on one thread and freed on another then pile up
/// (79 MB peak for 16 jobs of 1 MB, 51 MB with two arenas, at the same speed). An
/// explicit `MALLOC_ARENA_MAX` wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread exists;
        // mallopt only changes the allocator's tuning.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Threads' stack: a producer may nest header tables as deep as one AMQP frame
/// allows (~21,000 levels in 128 KiB), and lapin parses, clones, serializes and
/// drops them recursively: on its I/O thread and on the job tasks' threads. Release
/// builds need ~32 MiB for that, unoptimized ones ~512 MiB; with the default 2 MiB a
/// 200-deep header crashed the process. Stacks are reserved address space, paid in
/// memory only as deep as a thread really goes. An explicit `RUST_MIN_STACK` wins.
const THREAD_STACK: usize = if cfg!(debug_assertions) {
    1 << 30
} else {
    64 << 20
};

fn size_thread_stacks() {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // SAFETY: called first thing in main, before any other thread exists, so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_MIN_STACK", THREAD_STACK.to_string()) };
    }
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    size_thread_stacks();
    let cli = Cli::parse();
    let format = config::log_format(&cli.log_format).unwrap_or_else(|e| refuse(e));
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Run(args) => {
            let settings = args.settings().unwrap_or_else(|e| refuse(e));
            let _telemetry = runtime.block_on(async { telemetry::init(format, "cxone-worker") });
            // On a worker thread, not this one: the consumer loop and the job tasks it
            // spawns then share threads instead of waking each other across them.
            let ended = runtime.block_on(async { tokio::spawn(run::run(settings)).await });
            match ended {
                Ok(Ok(())) => Ok(()),
                // Start-up failures and errors no reconnection cures: one line, exit 2.
                Ok(Err(e)) => {
                    eprintln!("cxone-worker: {e:#}");
                    std::process::exit(2);
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Encode(args) => {
            if let Err(e) = args.limits.settings().and(args.format().map(|_| ())) {
                refuse(e);
            }
            runtime.block_on(encode::run(&args))
        }
        Command::Sim(cfg) => {
            let _telemetry =
                runtime.block_on(async { telemetry::init(format, "cxone-worker-sim") });
            runtime.block_on(cxone_worker::sim::run(cfg))
        }
        Command::Definitions(args) => definitions::run(&args).map_err(|e| refuse(e)),
        Command::Enqueue(args) => {
            let (request, broker) = args.request().unwrap_or_else(|e| refuse(e));
            exit_with(runtime.block_on(enqueue::run(request, broker)))
        }
        Command::Dlq(args) => {
            let cmd = args.settings().unwrap_or_else(|e| refuse(e));
            exit_with(runtime.block_on(dlq::run(cmd)))
        }
        Command::Status(args) => {
            let cmd = args.settings().unwrap_or_else(|e| refuse(e));
            exit_with(runtime.block_on(status::run(cmd)))
        }
    }
}
