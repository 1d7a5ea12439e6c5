//! Publishing with confirms: a publish counts only when the broker confirmed it and
//! did not return it. Many jobs publish on one channel at once, so confirms are
//! pipelined; each job waits only for its own.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};

use crate::telemetry::names;

/// Why a publish does not count; the job it belongs to is not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the message could not be routed to any queue ({0})")]
    Returned(String),
    #[error("no confirm within {0:?}")]
    TimedOut(Duration),
    #[error("the channel failed: {0}")]
    Channel(#[from] lapin::Error),
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    timeout: Duration,
}

/// A publish sent and not yet confirmed.
pub struct Pending {
    confirm: PublisherConfirm,
    timeout: Duration,
}

impl Publisher {
    /// Opens a channel in confirm mode.
    pub async fn open(connection: &Connection, timeout: Duration) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel, timeout })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Sends one message as persistent and mandatory; await the returned [`Pending`]
    /// for the broker's confirm.
    pub async fn send(&self, message: Outgoing) -> Result<Pending, PublishError> {
        let confirm = self
            .channel
            .basic_publish(
                message.exchange.as_str().into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                message.properties.with_delivery_mode(2),
            )
            .await?;
        Ok(Pending {
            confirm,
            timeout: self.timeout,
        })
    }

    /// Sends every message, then waits for all their confirms. The sends are handed
    /// to the connection's I/O thread together (polled in order, so their order on
    /// the channel is kept), and it writes them in one go: a job pays one trip to
    /// that thread and one wait for confirms, not one of each per message.
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> Result<(), PublishError> {
        let sent =
            futures_util::future::try_join_all(messages.into_iter().map(|m| self.send(m))).await?;
        futures_util::future::try_join_all(sent.into_iter().map(Pending::confirmed)).await?;
        Ok(())
    }
}

impl Pending {
    pub async fn confirmed(self) -> Result<(), PublishError> {
        let outcome = match tokio::time::timeout(self.timeout, self.confirm).await {
            Err(_) => Err(PublishError::TimedOut(self.timeout)),
            Ok(Err(e)) => Err(PublishError::Channel(e)),
            Ok(Ok(confirmation)) => check(confirmation),
        };
        if outcome.is_err() {
            metrics::counter!(names::PUBLISH_FAILURES).increment(1);
        }
        outcome
    }
}

fn check(confirmation: Confirmation) -> Result<(), PublishError> {
    if confirmation.is_nack() {
        return Err(PublishError::Nacked);
    }
    match confirmation.take_message() {
        Some(returned) => Err(PublishError::Returned(format!(
            "{} {}",
            returned.reply_code, returned.reply_text
        ))),
        None => Ok(()),
    }
}
