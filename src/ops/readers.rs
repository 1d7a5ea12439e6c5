//! Who holds the DLQ's messages right now, over AMQP alone: a `dlq` reader holds an
//! exclusive marker queue named after its command while it reads, and anyone else
//! finds it with a passive declare.
//!
//! A reader takes the DLQ's messages unacknowledged (see [`super::dlq`]), so while it
//! runs the DLQ shows 0 ready and one consumer, which looks like an empty queue. The
//! broker reports neither who that consumer is nor what it holds, and `basic.get`
//! would not even show a consumer. So each reader declares `P.jobs.dlq.reader.{list,
//! show,replay,purge}` as an exclusive queue: it lives exactly as long as the
//! reader's connection (the broker deletes it when the process ends, however it
//! ends), and a passive declare of it from any other connection answers 405
//! RESOURCE_LOCKED while it lives and 404 NOT_FOUND once it is gone. Nothing is ever
//! published to it.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::OpsError;
use crate::broker::topology::Topology;

/// The commands that hold the DLQ's messages while they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    List,
    Show,
    Replay,
    Purge,
}

impl Reader {
    pub const ALL: [Reader; 4] = [Reader::List, Reader::Show, Reader::Replay, Reader::Purge];

    /// The subcommand, as the marker's name ends.
    pub fn name(self) -> &'static str {
        match self {
            Reader::List => "list",
            Reader::Show => "show",
            Reader::Replay => "replay",
            Reader::Purge => "purge",
        }
    }

    /// As operators type it: `dlq replay`.
    pub fn command(self) -> String {
        format!("dlq {}", self.name())
    }
}

/// The marker one reader holds; `None` inside when it could not take one (another
/// reader of the same command holds it, or the broker refused the declare).
pub struct Marker {
    held: Option<(Channel, String)>,
}

/// Declares this reader's marker. It is advisory: a reader that cannot take it
/// still reads (and says so on stderr), since losing the marker only makes
/// `status` less precise, never loses a message.
pub async fn hold(connection: &Connection, topology: &Topology, reader: Reader) -> Marker {
    let name = topology.dlq_reader(reader.name());
    let declared = async {
        let channel = connection.create_channel().await?;
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.as_str().into(), options, FieldTable::default())
            .await?;
        Ok::<_, lapin::Error>(channel)
    };
    match declared.await {
        Ok(channel) => Marker {
            held: Some((channel, name)),
        },
        // Another `dlq` of the same command holds it: its marker already tells.
        Err(e) if super::amqp_code(&e) == Some(405) => Marker { held: None },
        Err(e) => {
            eprintln!(
                "cxone-worker: note: cannot declare {name} ({e}); `status` will not show that \
                 this {} holds the DLQ's messages",
                reader.command()
            );
            Marker { held: None }
        }
    }
}

impl Marker {
    /// Removes the marker once the messages are back; the end of the connection
    /// would remove it too, so a failure here changes nothing.
    pub async fn release(self) {
        if let Some((channel, name)) = self.held {
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel.close(200, "done".into()).await;
        }
    }
}

/// The readers that hold the DLQ's messages now, from other connections. One passive
/// declare per command, each on a channel of its own (a failed declare closes its
/// channel); callers ask only when the DLQ has consumers, so an idle DLQ costs nothing.
pub async fn holding(
    connection: &Connection,
    topology: &Topology,
) -> Result<Vec<Reader>, OpsError> {
    let mut found = Vec::new();
    for reader in Reader::ALL {
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let name = topology.dlq_reader(reader.name());
        match channel
            .queue_declare(name.as_str().into(), passive, FieldTable::default())
            .await
        {
            // A queue of that name that this connection may use is no reader's
            // marker (an exclusive one answers 405 to everyone but its owner).
            Ok(_) => {
                let _ = channel.close(200, "done".into()).await;
            }
            Err(e) => match super::amqp_code(&e) {
                Some(405) => found.push(reader),
                // Not found, or not ours to look at (a user whose permissions do not
                // cover the name): not known to be held. The marker only refines
                // what is shown; it must not fail the command.
                Some(_) => {}
                None => return Err(e.into()),
            },
        }
    }
    Ok(found)
}

/// `dlq replay, dlq list`: for notes and the status table.
pub fn describe(readers: &[Reader]) -> String {
    readers
        .iter()
        .map(|r| r.command())
        .collect::<Vec<_>>()
        .join(", ")
}
