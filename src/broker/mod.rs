//! RabbitMQ: the topology ([`topology`]), publishing with confirms ([`publisher`]),
//! the messages a job's outcome becomes ([`outputs`]), the consumer ([`consumer`]) and
//! the status pings it answers ([`control`]).

pub mod consumer;
pub mod control;
mod ledger;
pub mod outputs;
pub mod publisher;
pub mod topology;

/// Opens a connection with a name operators recognize in the management UI.
pub async fn connect(url: &crate::config::AmqpUrl, name: &str) -> lapin::Result<lapin::Connection> {
    let properties = lapin::ConnectionProperties::default().with_connection_name(name.into());
    lapin::Connection::connect(url.expose(), properties).await
}
