//! A `dlq` reader caught while it holds the DLQ: `dlq purge` waiting for its answer
//! holds every selected message unacknowledged for as long as the test wants. Shared
//! by tests/dlq.rs and tests/status.rs.
#![allow(dead_code)] // each test binary uses its own part

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::broker::Broker;

/// A running `dlq purge` that holds the DLQ's messages until it is answered.
pub struct Holder {
    child: tokio::process::Child,
}

/// Starts `dlq purge` and returns once its marker queue exists and the DLQ shows
/// nothing ready: from then on the reader holds every message.
pub async fn hold_dlq(b: &Broker) -> Holder {
    let mut cmd = b.cli(&["dlq", "purge"]);
    cmd.stdin(std::process::Stdio::piped());
    let child = cmd.spawn().expect("dlq purge starts");
    let marker = b.topology.dlq_reader("purge");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(marker_locked(b, &marker).await && b.ready(&b.topology.dlq()).await == 0) {
        assert!(
            Instant::now() < deadline,
            "dlq purge never held the DLQ (marker {marker})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Holder { child }
}

/// Whether `name` is an exclusive queue of another connection (405 to a passive
/// declare from this one).
pub async fn marker_locked(b: &Broker, name: &str) -> bool {
    match crate::cleanup::inspect_queue(&b.conn, name).await {
        Ok(_) => false,
        Err(e) => matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 405),
    }
}

impl Holder {
    /// Answers "no": nothing is purged and every message goes back. Returns what the
    /// reader printed on stdout.
    pub async fn decline(mut self) -> String {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"n\n").await.unwrap();
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(30), self.child.wait_with_output())
            .await
            .expect("dlq purge ends once answered")
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "declined: exit 1");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
