//! RabbitMQ: the topology ([`topology`]), publishing with confirms ([`publisher`]),
//! what a delivery says ([`incoming`]) and the messages a job's outcome becomes
//! ([`outputs`]), the consumer's sessions ([`consumer`], `session`), one delivery's
//! task (`delivery`), settling deliveries (`ledger`), pauses (`pause`) and the status
//! pings workers answer ([`control`]).

pub mod consumer;
pub mod control;
mod delivery;
pub mod incoming;
mod ledger;
pub mod outputs;
mod pause;
pub mod publisher;
mod session;
pub mod topology;

/// How long closing a connection may wait for the broker's answer. Past it the
/// socket is dropped anyway, with the same effect: the broker puts back whatever
/// the connection held unacknowledged. (Seen here: under load, lapin's close now
/// and then never returns although the socket is already closed.)
pub const CLOSE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Closes a connection, waiting at most [`CLOSE_DEADLINE`].
pub async fn close(connection: &lapin::Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_DEADLINE, connection.close(200, reason.into())).await;
}

/// Opens a connection with a name operators recognize in the management UI.
pub async fn connect(url: &crate::config::AmqpUrl, name: &str) -> lapin::Result<lapin::Connection> {
    let properties = lapin::ConnectionProperties::default().with_connection_name(name.into());
    lapin::Connection::connect(url.expose(), properties).await
}
