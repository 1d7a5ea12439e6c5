//! `cxone-worker run`: wire the parts together and consume until a signal.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Health};
use crate::broker::consumer::Consumer;
use crate::broker::topology::Topology;
use crate::budget::ByteBudget;
use crate::config::{AuditLevel, LimitScope, Settings};
use crate::cxone::Client;
use crate::limits::{FleetConfig, Limits};
use crate::source::Sources;
use crate::state::StateKey;
use crate::storage::Storage;
use crate::worker::{Tally, Worker, WorkerConfig};

/// Runs the worker until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    serve(settings, crate::shutdown::on_signal(), |_| {}).await
}

/// The job logic with everything it needs, as `settings` say (tests build one to
/// call `Worker::process` without a broker).
/// `limits`: the call limits `run` shares with its fleet; `None`, this process's own.
pub fn worker(settings: &Settings, limits: Option<Arc<Limits>>) -> anyhow::Result<Worker> {
    let client = Client::new(&settings.api, usize::from(settings.concurrency))
        .context("building the HTTP client")?;
    let client = match limits {
        Some(limits) => client.with_limits(limits),
        None => client,
    };
    let storage = settings
        .storage
        .as_ref()
        .map(Storage::new)
        // The error names its variable already.
        .transpose()?;
    Ok(Worker {
        sources: Sources::new(&settings.files)?,
        client: Arc::new(client),
        storage,
        budget: ByteBudget::for_files(
            settings.max_inflight_bytes,
            settings.files.max_payload_bytes,
        ),
        config: WorkerConfig::from_settings(settings),
        tally: Tally::default(),
    })
}

/// Runs the worker until `shutdown` is cancelled; `bound` is told the admin address
/// (tests bind port 0).
pub async fn serve(
    settings: Settings,
    shutdown: CancellationToken,
    bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let health = Arc::new(Health::default());
    admin::metrics_handle();
    let (listener, admin_addr) = admin::bind(settings.admin_addr)
        .await
        .with_context(|| format!("ADMIN_ADDR: cannot listen on {}", settings.admin_addr))?;
    bound(admin_addr);
    let admin = tokio::spawn(admin::serve(
        listener,
        health.clone(),
        shutdown.clone().cancelled_owned(),
    ));

    // fleet: the limits are the tenant's, shared with every replica on the prefix.
    let limits = Arc::new(call_limits(&settings));
    let worker = Arc::new(worker(&settings, Some(limits.clone()))?);
    let state_key = StateKey::derive(&settings.api.client_secret, &settings.broker.prefix);
    let consumer = Arc::new(Consumer {
        worker: worker.clone(),
        topology: Topology::new(&settings.broker.prefix, &settings.retry_delays),
        url: settings.broker.url.clone(),
        prefetch: settings.concurrency,
        publish_timeout: settings.publish_timeout,
        grace: settings.shutdown_grace,
        audit_all: settings.audit == AuditLevel::All,
        health,
        state_key,
        name: crate::broker::control::worker_name(),
    });
    tracing::info!(
        broker = %settings.broker.url,
        prefix = %settings.broker.prefix,
        profile = settings.api.profile.as_str(),
        api = settings
            .api
            .base_url
            .as_ref()
            .map_or("the tenant's, from CXONE_ISSUER", url::Url::as_str),
        concurrency = settings.concurrency,
        admin = %admin_addr,
        "cxone-worker starting"
    );
    let ended = consumer.run(shutdown.clone()).await;
    limits.stop().await; // fleet: after the last call, hand our share back
    worker.tally.log(worker.client.calls_sent());
    shutdown.cancel();
    match admin.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "admin server failed"),
        Err(e) => tracing::warn!(error = %e, "admin server task failed"),
    }
    match ended {
        Ok(()) => {
            tracing::info!("cxone-worker stopped");
            Ok(())
        }
        Err(fatal) => {
            tracing::error!(error = %fatal, "cxone-worker stopped: the broker refuses what only an operator can fix");
            Err(fatal.into())
        }
    }
}

/// `LIMIT_SCOPE`: this process's own limits, or its share of the fleet's.
fn call_limits(settings: &Settings) -> Limits {
    let rate = settings.api.rate_limit_per_minute;
    let calls = settings.call_limits.concurrent_calls(settings.api.profile);
    match settings.call_limits.scope {
        LimitScope::Process => Limits::process(rate, calls),
        LimitScope::Fleet => Limits::fleet(FleetConfig {
            url: settings.broker.url.clone(),
            prefix: settings.broker.prefix.clone(),
            rate_limit_per_minute: rate,
            max_concurrent_calls: calls,
            name: crate::broker::control::worker_name(),
        }),
    }
}
