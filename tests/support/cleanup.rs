//! The one RabbitMQ address of the tests, looking at a queue, removing one test's
//! topology from it, and closing a connection from the broker's side as an operator
//! would.
#![allow(dead_code)] // each test binary uses its own part of the support

use cxone_worker::broker::topology::Topology;
use lapin::{Connection, ConnectionProperties};

/// 127.0.0.1:5672 as guest, or `AMQP_URL`.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A passive declare of `queue` (its depth and consumers), on a channel of its own:
/// the broker closes the channel when the queue does not exist, or is another
/// connection's exclusive queue.
pub async fn inspect_queue(conn: &Connection, queue: &str) -> Result<lapin::Queue, lapin::Error> {
    let ch = conn.create_channel().await?;
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await?;
    let _ = ch.close(200, "ok".into()).await;
    Ok(q)
}

/// Publishes one persistent, mandatory message on a confirm channel and fails the
/// test unless the broker confirmed it and routed it somewhere.
pub async fn publish_confirmed(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: lapin::BasicProperties,
) {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props.with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        confirm.is_ack() && confirm.take_message().is_none(),
        "publish to {exchange:?}/{routing_key} refused or not routed"
    );
}

/// Deletes every queue and exchange of `topology` (`P.control` included), best
/// effort. Runs on a thread with its own runtime, so it works from `Drop` of a
/// failing test as well as a passing one, whatever runtime the test used.
pub fn delete_topology(topology: Topology) {
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
            else {
                return;
            };
            // A channel per deletion: a failed one closes its channel.
            for q in topology.queues() {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch.queue_delete(q.name.into(), Default::default()).await;
                }
            }
            for e in topology.exchanges() {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch.exchange_delete(e.name.into(), Default::default()).await;
                }
            }
            let _ = conn.close(200, "test over".into()).await;
        });
    })
    .join();
}

/// Closes the broker connection whose name holds `name` (`rabbitmqctl
/// close_connection`); false when there is none.
pub fn close_connection(name: &str) -> bool {
    use std::process::{Command, Stdio};
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find(|l| l.contains(name)) else {
        return false;
    };
    let pid = line.split('\t').next().unwrap_or("").trim().to_owned();
    Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "closed by a test"])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
