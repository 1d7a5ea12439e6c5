//! The local CXone API simulator (`cxone-worker sim`): a drop-in for the conformance suite's
//! reference `sim.mjs`, fast enough never to be the bottleneck of a benchmark.
//!
//! | file | job |
//! |---|---|
//! | `config.rs` | the knobs, as flags and `SIM_*` variables |
//! | `routes.rs` | the router, token and `/__stats` `/__reset` endpoints, shared HTTP helpers |
//! | `execute.rs` | the execute endpoint and its order of checks |
//! | `payload.rs` | the execute body: JSON, strict base64, size and SHA-256 |
//! | `state.rs` | counters, rate window, tokens, per-key records |

mod config;
mod execute;
mod payload;
mod routes;
mod state;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use config::SimConfig;
use state::Sim;

/// Serves the simulator on `listener` until `shutdown` resolves, then lets requests in
/// progress finish. Prints nothing.
pub async fn serve(
    listener: TcpListener,
    cfg: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_sim(listener, Arc::new(Sim::new(cfg)?), shutdown).await
}

async fn serve_sim(
    listener: TcpListener,
    sim: Arc<Sim>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Small answers on keep-alive connections must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, routes::router(sim))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A simulator running on the current tokio runtime; dropping it stops the server.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    /// Never sent on: dropping it wakes the server's shutdown future.
    _shutdown: oneshot::Sender<()>,
}

impl SimHandle {
    /// The address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the API, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Binds `cfg.host:cfg.port` (port 0 = any free port) and serves in a spawned task.
pub async fn spawn(cfg: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind((cfg.host, cfg.port)).await?;
    let addr = listener.local_addr()?;
    // Built here so that a bad config is the caller's error, not a silently dead task.
    let sim = Arc::new(Sim::new(cfg)?);
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = serve_sim(listener, sim, async move { _ = rx.await }).await {
            tracing::error!(error = %e, "simulator stopped");
        }
    });
    Ok(SimHandle {
        addr,
        _shutdown: tx,
    })
}

/// `cxone-worker sim`: binds, prints `sim listening on http://HOST:PORT` on stdout (the one
/// line scripts wait for), and serves until SIGINT or SIGTERM.
pub async fn run(cfg: SimConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind((cfg.host, cfg.port))
        .await
        .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    let sim = Arc::new(Sim::new(cfg)?);
    let shutdown = termination()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "sim listening on http://{addr}")?;
    out.flush()?;
    drop(out);
    serve_sim(listener, sim, shutdown).await?;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM. The handlers are installed before it returns,
/// so a signal that comes right after start-up is not missed.
fn termination() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}
