//! RabbitMQ: the topology ([`topology`]), publishing with confirms ([`publisher`]),
//! the messages a job's outcome becomes ([`outputs`]) and the consumer ([`consumer`]).

pub mod consumer;
pub mod outputs;
pub mod publisher;
pub mod topology;

/// Opens a connection with a name operators recognize in the management UI.
pub async fn connect(url: &crate::config::AmqpUrl, name: &str) -> lapin::Result<lapin::Connection> {
    let properties = lapin::ConnectionProperties::default().with_connection_name(name.into());
    lapin::Connection::connect(url.expose(), properties).await
}
