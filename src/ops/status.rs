//! `status`: ready, unacknowledged and consumers of every queue of the topology, over
//! AMQP alone: nothing declared, nothing consumed.
//!
//! A passive `queue.declare` reports ready messages and consumers. Unacknowledged
//! messages are held by consumers, so they are asked: every running worker, paused
//! or not, answers a ping on `P.control` with the deliveries it holds (see
//! `broker::control`). A queue with no consumer has none unacknowledged; a queue
//! whose consumers are not all workers that answered shows `n/a`, never a guess. A
//! DLQ with a consumer is checked for the markers of `dlq` readers (see
//! `ops::readers`): its messages are then held by that reader, not gone.

use std::time::Duration;

use lapin::Connection;
use serde_json::{Value, json};

use super::OpsError;
use super::readers::{self, Reader};
use super::table::{Align, Table};
use crate::broker::control::{self, Gather, WorkerReport};
use crate::broker::topology::Topology;

/// How long `status` gathers the workers' answers. Each worker answers from its event
/// loop as soon as the ping reaches its queue, so on one broker the answers arrive
/// within milliseconds of each other (see docs/operators.md for figures): 300 ms of
/// silence after the last one is many times that spread, and costs a person at the
/// terminal little. The bound keeps a worker that never answers from holding
/// `status` (and every `--watch` refresh) for longer than 3 s. With no worker at all
/// the ping comes back unroutable and nothing is waited for.
const GATHER: Gather = Gather {
    quiet: Duration::from_millis(300),
    bound: Duration::from_secs(3),
};

/// Shown under the table when some count is unknown.
pub const UNACKED_NOTE: &str = "unacked n/a: held by consumers that are not cxone workers (or did not answer); \
     `rabbitmqctl list_queues name messages_unacknowledged` knows";

/// One queue's numbers; `depth` is `None` when the queue does not exist.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStatus {
    pub name: String,
    pub role: &'static str,
    pub depth: Option<Depth>,
    /// `dlq` readers that hold the queue's messages (the DLQ only).
    pub held_by: Vec<Reader>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Depth {
    pub ready: u32,
    /// `None` when the consumers holding them could not be asked.
    pub unacked: Option<u64>,
    pub consumers: u32,
}

/// The queues and the workers at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub queues: Vec<QueueStatus>,
    pub workers: Vec<WorkerReport>,
}

/// The queues in the order a job meets them: jobs, retry queues (shortest delay
/// first), DLQ, then the outputs; and every worker that answers, paused or not.
pub async fn snapshot(connection: &Connection, topology: &Topology) -> Result<Snapshot, OpsError> {
    let rank = |role: &str| {
        ["jobs", "retry", "dead letters", "results", "audit"]
            .iter()
            .position(|r| *r == role)
    };
    let mut specs = topology.queues();
    // A stable sort keeps the retry queues in delay order.
    specs.sort_by_key(|q| rank(q.role));
    let mut queues = Vec::with_capacity(specs.len());
    for spec in specs {
        let depth = super::peek_queue(connection, &spec.name)
            .await?
            .map(|q| Depth {
                ready: q.message_count(),
                unacked: (q.consumer_count() == 0).then_some(0),
                consumers: q.consumer_count(),
            });
        // Only a consumer holds messages: an idle DLQ costs no marker checks.
        let held_by = match depth {
            Some(d) if spec.role == DLQ_ROLE && d.consumers > 0 => {
                readers::holding(connection, topology).await?
            }
            _ => Vec::new(),
        };
        queues.push(QueueStatus {
            name: spec.name,
            role: spec.role,
            depth,
            held_by,
        });
    }
    // Always asked: a paused worker has cancelled its consumer, so the jobs queue's
    // consumer count says nothing about how many workers run.
    let workers = control::ping(connection, topology, GATHER).await?;
    Ok(Snapshot {
        queues: with_worker_counts(queues, &workers),
        workers,
    })
}

/// Fills in the jobs queue's unacknowledged count when every consumer of it is a
/// worker that answered (a paused worker answers but does not consume).
fn with_worker_counts(mut queues: Vec<QueueStatus>, workers: &[WorkerReport]) -> Vec<QueueStatus> {
    let consuming = workers.iter().filter(|w| w.consuming).count() as u32;
    for q in &mut queues {
        if let (Some(depth), "jobs") = (q.depth.as_mut(), q.role)
            && depth.consumers > 0
            && consuming >= depth.consumers
        {
            depth.unacked = Some(workers.iter().map(|w| w.unacked).sum());
        }
    }
    queues
}

/// The role `Topology::queues` gives the DLQ.
const DLQ_ROLE: &str = "dead letters";

/// `held by a reader (dlq replay): back when it ends`, for the NOTE column and JSON.
fn held_note(held_by: &[Reader]) -> Option<String> {
    (!held_by.is_empty()).then(|| {
        format!(
            "held by a reader ({}): back in the queue when it ends",
            readers::describe(held_by)
        )
    })
}

pub fn to_table(snapshot: &Snapshot) -> String {
    let mut columns = vec![
        ("QUEUE", Align::Left),
        ("ROLE", Align::Left),
        ("READY", Align::Right),
        ("UNACKED", Align::Right),
        ("CONSUMERS", Align::Right),
    ];
    // The NOTE column only when there is something to say: the usual table keeps
    // its width.
    let notes = snapshot.queues.iter().any(|q| !q.held_by.is_empty());
    if notes {
        columns.push(("NOTE", Align::Left));
    }
    let mut table = Table::new(&columns);
    let mut unknown = false;
    for q in &snapshot.queues {
        let (ready, unacked, consumers) = match q.depth {
            Some(d) => {
                // A reader's hold is explained on its own line, not by the n/a note.
                unknown |= d.unacked.is_none() && q.held_by.is_empty();
                let unacked = d
                    .unacked
                    .map_or_else(|| "n/a".to_owned(), |n| n.to_string());
                (d.ready.to_string(), unacked, d.consumers.to_string())
            }
            None => ("missing".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        let mut row = vec![q.name.clone(), q.role.to_owned(), ready, unacked, consumers];
        if notes {
            row.push(held_note(&q.held_by).unwrap_or_default());
        }
        table.row(row);
    }
    let mut out = table.render();
    if !snapshot.workers.is_empty() {
        let mut workers = Table::new(&[
            ("WORKER", Align::Left),
            ("STATE", Align::Left),
            ("UNACKED", Align::Right),
            ("PREFETCH", Align::Right),
            ("VERSION", Align::Left),
        ]);
        for w in &snapshot.workers {
            workers.row(vec![
                w.worker.clone(),
                state(w),
                w.unacked.to_string(),
                w.prefetch.to_string(),
                w.version.clone(),
            ]);
        }
        out.push('\n');
        out.push_str(&workers.render());
    }
    if unknown {
        out.push_str(UNACKED_NOTE);
        out.push('\n');
    }
    out
}

fn state(w: &WorkerReport) -> String {
    match (&w.paused, w.consuming) {
        (Some(reason), _) => format!("paused: {reason}"),
        (None, true) => "consuming".into(),
        (None, false) => "not consuming".into(),
    }
}

pub fn to_json(snapshot: &Snapshot, at: &str) -> Value {
    let queues: Vec<Value> = snapshot
        .queues
        .iter()
        .map(|q| {
            json!({
                "name": q.name,
                "role": q.role,
                "exists": q.depth.is_some(),
                "ready": q.depth.map(|d| d.ready),
                "unacked": q.depth.and_then(|d| d.unacked),
                "consumers": q.depth.map(|d| d.consumers),
                "held_by": q.held_by.iter().map(|r| r.command()).collect::<Vec<_>>(),
                "note": held_note(&q.held_by),
            })
        })
        .collect();
    json!({"at": at, "queues": queues, "workers": snapshot.workers, "unacked_note": UNACKED_NOTE})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str, role: &'static str, ready: u32, consumers: u32) -> QueueStatus {
        QueueStatus {
            name: name.into(),
            role,
            depth: Some(Depth {
                ready,
                unacked: (consumers == 0).then_some(0),
                consumers,
            }),
            held_by: Vec::new(),
        }
    }

    fn worker(unacked: u64, consuming: bool) -> WorkerReport {
        WorkerReport {
            worker: "host:1".into(),
            version: "0.1.0".into(),
            unacked,
            prefetch: 16,
            consuming,
            paused: None,
        }
    }

    #[test]
    fn unacked_counts_come_from_the_workers_or_are_n_a() {
        let queues = vec![
            queue("p.jobs", "jobs", 1200, 2),
            queue("p.results", "results", 5, 1),
            QueueStatus {
                name: "p.retry.5s".into(),
                role: "retry",
                depth: None,
                held_by: Vec::new(),
            },
            queue("p.audit", "audit", 7, 0),
        ];
        let both = with_worker_counts(queues.clone(), &[worker(16, true), worker(3, true)]);
        assert_eq!(both[0].depth.unwrap().unacked, Some(19));
        assert_eq!(
            both[1].depth.unwrap().unacked,
            None,
            "results are held by someone else"
        );
        assert_eq!(
            both[3].depth.unwrap().unacked,
            Some(0),
            "no consumer, nothing unacknowledged"
        );
        let one = with_worker_counts(queues, &[worker(16, true)]);
        assert_eq!(
            one[0].depth.unwrap().unacked,
            None,
            "a consumer that did not answer"
        );
    }

    #[test]
    fn a_held_dlq_gets_a_note_and_no_n_a_footnote() {
        let mut dlq = queue("p.jobs.dlq", DLQ_ROLE, 0, 1);
        dlq.depth = dlq.depth.map(|d| Depth { unacked: None, ..d });
        dlq.held_by = vec![Reader::Replay];
        let snapshot = Snapshot {
            queues: vec![queue("p.jobs", "jobs", 3, 0), dlq],
            workers: vec![],
        };
        let table = to_table(&snapshot);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("CONSUMERS  NOTE"), "{table}");
        assert!(
            lines[2].ends_with(
                "  n/a          1  held by a reader (dlq replay): back in the queue when it ends"
            ),
            "{table}"
        );
        assert_eq!(
            lines[1].trim_end(),
            lines[1],
            "no trailing blanks where there is no note"
        );
        assert!(!table.contains("unacked n/a"), "{table}");
        let j = to_json(&snapshot, "t");
        assert_eq!(j["queues"][1]["held_by"], serde_json::json!(["dlq replay"]));
        assert!(j["queues"][0]["note"].is_null());
    }

    #[test]
    fn tables_and_json() {
        let snapshot = Snapshot {
            queues: with_worker_counts(
                vec![
                    queue("p.jobs", "jobs", 1200, 1),
                    queue("p.results", "results", 5, 1),
                ],
                &[worker(16, true)],
            ),
            workers: vec![worker(16, true)],
        };
        let table = to_table(&snapshot);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "QUEUE      ROLE     READY  UNACKED  CONSUMERS");
        assert_eq!(lines[1], "p.jobs     jobs      1200       16          1");
        assert_eq!(lines[2], "p.results  results      5      n/a          1");
        assert!(lines[4].starts_with("WORKER"), "{table}");
        assert!(
            lines[5].contains("consuming") && lines[5].contains("16"),
            "{table}"
        );
        assert!(table.contains("unacked n/a"));
        let j = to_json(&snapshot, "t");
        assert_eq!(j["queues"][0]["unacked"], 16);
        assert!(j["queues"][1]["unacked"].is_null());
        assert_eq!(j["workers"][0]["prefetch"], 16);
    }
}
