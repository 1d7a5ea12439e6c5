//! `status`: ready messages and consumers of every queue of the topology, from a
//! passive `queue.declare` each: AMQP alone, nothing declared, nothing consumed.
//!
//! AMQP 0-9-1 reports ready messages and consumers, never unacknowledged ones (they
//! are known to the broker's management API and `rabbitmqctl` only). Reading them
//! some other way over AMQP would mean taking messages, which changes what is
//! measured; so the count is shown as `n/a`, and `null` in JSON.

use lapin::Connection;
use serde_json::{Value, json};

use super::OpsError;
use super::table::{Align, Table};
use crate::broker::topology::Topology;

/// Why there is no unacknowledged count; shown under the table and in the JSON.
pub const UNACKED_NOTE: &str = "unacked: n/a, AMQP reports ready messages and consumers only; \
     see `rabbitmqctl list_queues name messages_ready messages_unacknowledged consumers`";

/// One queue's numbers; `depth` is `None` when the queue does not exist.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStatus {
    pub name: String,
    pub role: &'static str,
    pub depth: Option<Depth>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Depth {
    pub ready: u32,
    pub consumers: u32,
}

/// The queues in the order a job meets them: jobs, retry queues (shortest delay
/// first), DLQ, then the outputs.
pub async fn snapshot(
    connection: &Connection,
    topology: &Topology,
) -> Result<Vec<QueueStatus>, OpsError> {
    let rank = |role: &str| {
        ["jobs", "retry", "dead letters", "results", "audit"]
            .iter()
            .position(|r| *r == role)
    };
    let mut specs = topology.queues();
    // A stable sort keeps the retry queues in delay order.
    specs.sort_by_key(|q| rank(q.role));
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let depth = super::peek_queue(connection, &spec.name)
            .await?
            .map(|q| Depth {
                ready: q.message_count(),
                consumers: q.consumer_count(),
            });
        out.push(QueueStatus {
            name: spec.name,
            role: spec.role,
            depth,
        });
    }
    Ok(out)
}

pub fn to_table(queues: &[QueueStatus]) -> String {
    let mut table = Table::new(&[
        ("QUEUE", Align::Left),
        ("ROLE", Align::Left),
        ("READY", Align::Right),
        ("UNACKED", Align::Right),
        ("CONSUMERS", Align::Right),
    ]);
    for q in queues {
        let (ready, unacked, consumers) = match q.depth {
            Some(d) => (
                d.ready.to_string(),
                "n/a".to_owned(),
                d.consumers.to_string(),
            ),
            None => ("missing".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        table.row(vec![
            q.name.clone(),
            q.role.to_owned(),
            ready,
            unacked,
            consumers,
        ]);
    }
    format!("{}{UNACKED_NOTE}\n", table.render())
}

pub fn to_json(queues: &[QueueStatus], at: &str) -> Value {
    let queues: Vec<Value> = queues
        .iter()
        .map(|q| {
            json!({
                "name": q.name,
                "role": q.role,
                "exists": q.depth.is_some(),
                "ready": q.depth.map(|d| d.ready),
                "unacked": Value::Null,
                "consumers": q.depth.map(|d| d.consumers),
            })
        })
        .collect();
    json!({"at": at, "queues": queues, "unacked_note": UNACKED_NOTE})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_queues_and_unknown_unacked_are_plain() {
        let queues = [
            QueueStatus {
                name: "p.jobs".into(),
                role: "jobs",
                depth: Some(Depth {
                    ready: 1200,
                    consumers: 2,
                }),
            },
            QueueStatus {
                name: "p.retry.5s".into(),
                role: "retry",
                depth: None,
            },
        ];
        let table = to_table(&queues);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "QUEUE       ROLE     READY  UNACKED  CONSUMERS");
        assert_eq!(lines[1], "p.jobs      jobs      1200      n/a          2");
        assert_eq!(lines[2], "p.retry.5s  retry  missing        -          -");
        assert!(lines[3].starts_with("unacked: n/a"));
        let j = to_json(&queues, "t");
        assert_eq!(j["queues"][0]["ready"], 1200);
        assert!(j["queues"][0]["unacked"].is_null());
        assert_eq!(j["queues"][1]["exists"], false);
    }
}
