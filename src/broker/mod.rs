//! RabbitMQ: the topology ([`topology`]), publishing with confirms ([`publisher`]),
//! what a delivery says ([`incoming`]) and the messages a job's outcome becomes
//! ([`outputs`]), the consumer's sessions ([`consumer`], `session`), one delivery's
//! task (`delivery`), settling deliveries (`ledger`), pauses (`pause`) and the status
//! pings workers answer ([`control`]).

pub mod consumer;
pub mod control;
mod delivery;
mod depths;
pub mod incoming;
mod ledger;
pub mod outputs;
mod pause;
pub mod publisher;
mod session;
pub mod topology;
mod trace;

use crate::config::AmqpUrl;

/// How long closing a connection may wait for the broker's answer. Past it the
/// socket is dropped anyway, with the same effect: the broker puts back whatever
/// the connection held unacknowledged. (Seen here: under load, lapin's close now
/// and then never returns although the socket is already closed.)
pub const CLOSE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Closes a connection, waiting at most [`CLOSE_DEADLINE`].
pub async fn close(connection: &lapin::Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_DEADLINE, connection.close(200, reason.into())).await;
}

/// How long one node of a cluster list may take to accept a connection before the
/// next one is tried. A single URL has no such limit here: its callers bound the
/// whole attempt themselves.
pub const NODE_CONNECT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a connection with a name operators recognize in the management UI, trying
/// the nodes of `url` in turn (see [`AmqpUrl::rotation`]): the first that accepts
/// wins; when none does, the last node's error is returned.
pub async fn connect(url: &AmqpUrl, name: &str) -> lapin::Result<lapin::Connection> {
    let properties = lapin::ConnectionProperties::default().with_connection_name(name.into());
    let mut last_error = None;
    for (index, node) in url.rotation() {
        let attempt = lapin::Connection::connect(node.expose(), properties.clone());
        let outcome = if url.len() == 1 {
            attempt.await
        } else {
            tokio::time::timeout(NODE_CONNECT_DEADLINE, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {NODE_CONNECT_DEADLINE:?}"),
                    )
                    .into())
                })
        };
        match outcome {
            Ok(connection) => {
                url.connected(index);
                return Ok(connection);
            }
            Err(e) => {
                url.failed(index);
                if url.len() > 1 {
                    tracing::warn!(broker = node.redacted(), error = %crate::telemetry::chain(&e), "cannot connect to this broker node");
                }
                last_error = Some(e);
            }
        }
    }
    Err(last_error.expect("an AmqpUrl names at least one node"))
}
