//! Every exchange, queue, binding, argument, header and routing key of the worker,
//! in one place: `declare` applies it, `definitions` exports it for operators who
//! pre-declare it, and nothing else in the crate spells a name.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use serde_json::{Value, json};

use crate::text::format_duration;

/// Deliveries of one job message before the broker dead-letters it without the
/// worker: the backstop for a message that crashes the worker every time. High
/// enough that hand-backs during pauses and restarts never reach it.
pub const JOBS_DELIVERY_LIMIT: i64 = 20;

/// Every `dlq list` takes the dead letters and puts them back, which a quorum queue
/// counts as a delivery; RabbitMQ 4 gives quorum queues a default limit of 20 and
/// drops a message past it. No operator lists a queue a million times; -1
/// (unlimited in 4.x) is refused by 3.x.
pub const DLQ_DELIVERY_LIMIT: i64 = 1_000_000;

/// Headers the worker reads and writes.
pub mod headers {
    /// The job's state on the worker's own copies (JSON of `state::JobState`), and
    /// its signature: trusted only when the signature checks out for the message.
    pub const STATE: &str = "x-cxone-state";
    pub const STATE_SIGNATURE: &str = "x-cxone-state-sig";
    /// Written by versions before the signed state; never trusted, and dropped from
    /// every copy the worker makes, so a forged value does not even travel on.
    pub const ATTEMPTS: &str = "x-cxone-attempts";
    pub const EXECUTION_ID: &str = "x-cxone-execution-id";
    pub const SYNC_FAILURES: &str = "x-cxone-sync-failures";
    pub const REPLAYS: &str = "x-cxone-replays";
    pub const RETURNS: &str = "x-cxone-returns";
    pub const LEGACY: [&str; 5] = [ATTEMPTS, EXECUTION_ID, SYNC_FAILURES, REPLAYS, RETURNS];
    /// Every header the worker owns on a job's copies.
    pub const OWNED: [&str; 7] = [
        STATE,
        STATE_SIGNATURE,
        ATTEMPTS,
        EXECUTION_ID,
        SYNC_FAILURES,
        REPLAYS,
        RETURNS,
    ];
    /// On DLQ copies, as the contract names them.
    pub const ERROR_KIND: &str = "x-error-kind";
    pub const ERROR: &str = "x-error";
    pub const DLQ_ATTEMPTS: &str = "x-attempts";
    pub const FAILED_AT: &str = "x-failed-at";
    /// Set by RabbitMQ: deliveries of a message from a quorum queue.
    pub const DELIVERY_COUNT: &str = "x-delivery-count";
    /// Set by RabbitMQ when it dead-letters a message.
    pub const DEATH: &str = "x-death";
    /// Set by RabbitMQ with the first (and, from 3.13, last) dead-lettering:
    /// `x-first-death-reason`, `x-first-death-queue`, `x-first-death-exchange`…
    pub const FIRST_DEATH_PREFIX: &str = "x-first-death-";
    pub const LAST_DEATH_PREFIX: &str = "x-last-death-";
    /// The contract's DLQ headers all start so (`x-error-kind`, `x-error`).
    pub const ERROR_PREFIX: &str = "x-error";
    /// Keys of one `x-death` entry.
    pub mod death {
        pub const REASON: &str = "reason";
        pub const QUEUE: &str = "queue";
        pub const TIME: &str = "time";
    }
}

/// Routing keys of what the worker publishes.
pub mod routing {
    /// Jobs that `enqueue` publishes to the jobs exchange (bound with `#`).
    pub const JOB: &str = "job";
    pub const SUCCEEDED: &str = "job.succeeded";
    pub const FAILED: &str = "job.failed";

    pub fn audit(event: &str) -> String {
        format!("audit.{event}")
    }

    /// A dead letter is routed by its error kind (the DLQ is bound with `#`, and an
    /// operator may bind a queue of their own to one kind).
    pub fn dead_letter(kind: crate::job::ErrorKind) -> &'static str {
        kind.as_str()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Quorum,
}

/// One queue: its name, its arguments, and the role `status` shows.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub role: &'static str,
    pub kind: QueueKind,
    pub arguments: Vec<(&'static str, Arg)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Int(i64),
}

#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    pub name: String,
    /// Topic for the contract's exchanges; fanout for `P.control`.
    pub fanout: bool,
}

#[derive(Debug, Clone)]
pub struct BindingSpec {
    pub exchange: String,
    pub queue: String,
    pub key: &'static str,
}

/// A part of the topology the broker would not declare, and its answer.
#[derive(Debug, thiserror::Error)]
#[error("declaring {what}: {source}")]
pub struct DeclareError {
    /// `queue cxone.jobs`, `exchange cxone.dlx`…
    pub what: String,
    #[source]
    pub source: lapin::Error,
}

impl DeclareError {
    fn of(what: String) -> impl FnOnce(lapin::Error) -> DeclareError {
        move |source| DeclareError { what, source }
    }
}

/// The names of one worker deployment, derived from `CXONE_QUEUE_PREFIX`.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    /// Distinct delays of `RETRY_DELAYS`, one retry queue each.
    delays: Vec<Duration>,
}

impl Topology {
    pub fn new(prefix: &str, retry_delays: &[Duration]) -> Self {
        let mut delays = Vec::new();
        for d in retry_delays {
            if !delays.contains(d) {
                delays.push(*d);
            }
        }
        Self {
            prefix: prefix.to_owned(),
            delays,
        }
    }

    /// For tools that only read queues (`status`, `dlq`): the retry queues are
    /// found by name, so they need no delays.
    pub fn names_only(prefix: &str) -> Self {
        Self::new(prefix, &[])
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The jobs exchange, and the jobs queue of the same name.
    pub fn jobs(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    pub fn results(&self) -> String {
        format!("{}.results", self.prefix)
    }

    pub fn audit(&self) -> String {
        format!("{}.audit", self.prefix)
    }

    pub fn dlx(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn dlq(&self) -> String {
        format!("{}.jobs.dlq", self.prefix)
    }

    /// Where `status` pings the running workers (see `broker::control`).
    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// The exclusive marker queue that a `dlq` reader (`list`, `replay`…) holds while
    /// it holds the DLQ's messages, so that `status` can say who has them.
    pub fn dlq_reader(&self, command: &str) -> String {
        format!("{}.jobs.dlq.reader.{command}", self.prefix)
    }

    /// The queue where a job waits `delay` before going back to `P.jobs`.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.prefix, format_duration(delay))
    }

    /// Recognizes a retry queue's name (for `status`, which has no delays).
    pub fn is_retry_queue(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix(".retry."))
            .and_then(crate::text::parse_duration)
            .is_some()
    }

    pub fn exchanges(&self) -> Vec<ExchangeSpec> {
        let mut exchanges: Vec<ExchangeSpec> =
            [self.jobs(), self.results(), self.audit(), self.dlx()]
                .into_iter()
                .map(|name| ExchangeSpec {
                    name,
                    fanout: false,
                })
                .collect();
        exchanges.push(ExchangeSpec {
            name: self.control(),
            fanout: true,
        });
        exchanges
    }

    pub fn queues(&self) -> Vec<QueueSpec> {
        let quorum = |name: String, role, arguments| QueueSpec {
            name,
            role,
            kind: QueueKind::Quorum,
            arguments,
        };
        // At-least-once dead-lettering (which needs reject-publish overflow) keeps a
        // message that the broker moves between queues from being lost on the way.
        let safe_dead_letter = || {
            vec![
                ("x-dead-letter-strategy", Arg::Text("at-least-once".into())),
                ("x-overflow", Arg::Text("reject-publish".into())),
            ]
        };
        let mut jobs_args = vec![
            ("x-delivery-limit", Arg::Int(JOBS_DELIVERY_LIMIT)),
            ("x-dead-letter-exchange", Arg::Text(self.dlx())),
        ];
        jobs_args.extend(safe_dead_letter());
        let mut queues = vec![
            quorum(self.jobs(), "jobs", jobs_args),
            quorum(self.results(), "results", vec![]),
            quorum(self.audit(), "audit", vec![]),
            quorum(
                self.dlq(),
                "dead letters",
                vec![("x-delivery-limit", Arg::Int(DLQ_DELIVERY_LIMIT))],
            ),
        ];
        for delay in &self.delays {
            let mut args = vec![
                ("x-message-ttl", Arg::Int(delay.as_millis() as i64)),
                // Straight back to the jobs queue, not through the jobs exchange:
                // other bindings an operator added there must not see retries.
                ("x-dead-letter-exchange", Arg::Text(String::new())),
                ("x-dead-letter-routing-key", Arg::Text(self.jobs())),
            ];
            args.extend(safe_dead_letter());
            queues.push(quorum(self.retry_queue(*delay), "retry", args));
        }
        queues
    }

    pub fn bindings(&self) -> Vec<BindingSpec> {
        let all = |exchange: String, queue: String| BindingSpec {
            exchange,
            queue,
            key: "#",
        };
        vec![
            all(self.jobs(), self.jobs()),
            all(self.results(), self.results()),
            all(self.audit(), self.audit()),
            all(self.dlx(), self.dlq()),
        ]
    }

    /// Declares everything; idempotent, so every (re)connection calls it. An error
    /// names what could not be declared.
    pub async fn declare(&self, channel: &Channel) -> Result<(), DeclareError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for exchange in self.exchanges() {
            let kind = if exchange.fanout {
                ExchangeKind::Fanout
            } else {
                ExchangeKind::Topic
            };
            let what = format!("exchange {}", exchange.name);
            channel
                .exchange_declare(exchange.name.into(), kind, durable, FieldTable::default())
                .await
                .map_err(DeclareError::of(what))?;
        }
        for queue in self.queues() {
            let what = format!("queue {}", queue.name);
            channel
                .queue_declare(
                    queue.name.clone().into(),
                    QueueDeclareOptions::durable(),
                    queue.field_table(),
                )
                .await
                .map_err(DeclareError::of(what))?;
        }
        for b in self.bindings() {
            let what = format!("the binding of queue {} to {}", b.queue, b.exchange);
            channel
                .queue_bind(
                    b.queue.into(),
                    b.exchange.into(),
                    b.key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(DeclareError::of(what))?;
        }
        Ok(())
    }

    /// `P.control` alone, as [`Topology::declare`] declares it: for the fleet's link,
    /// which may connect before the consumer has declared the rest.
    pub async fn declare_control_exchange(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.control().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
    }

    /// A worker's own queue on `P.control`, consumed without acks: exclusive and
    /// auto-deleted, so it lives exactly as long as the worker's connection;
    /// `arguments` as the caller needs (the fleet's notes expire).
    pub async fn consume_control_queue(
        &self,
        channel: &Channel,
        arguments: FieldTable,
    ) -> lapin::Result<lapin::Consumer> {
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                self.control().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
    }

    /// The same topology as a RabbitMQ definitions document (`rabbitmqctl
    /// import_definitions`, or `load_definitions` in rabbitmq.conf).
    pub fn definitions(&self, vhost: &str) -> Value {
        let exchanges: Vec<Value> = self
            .exchanges()
            .into_iter()
            .map(|e| {
                let kind = if e.fanout { "fanout" } else { "topic" };
                json!({"name": e.name, "vhost": vhost, "type": kind, "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}})
            })
            .collect();
        let queues: Vec<Value> = self
            .queues()
            .into_iter()
            .map(|q| {
                let mut arguments = serde_json::Map::new();
                arguments.insert("x-queue-type".into(), json!("quorum"));
                for (k, v) in &q.arguments {
                    arguments.insert((*k).into(), v.to_json());
                }
                json!({"name": q.name, "vhost": vhost, "durable": true, "auto_delete": false,
                       "arguments": arguments})
            })
            .collect();
        let bindings: Vec<Value> = self
            .bindings()
            .into_iter()
            .map(|b| {
                json!({"source": b.exchange, "vhost": vhost, "destination": b.queue,
                       "destination_type": "queue", "routing_key": b.key, "arguments": {}})
            })
            .collect();
        json!({"exchanges": exchanges, "queues": queues, "bindings": bindings})
    }
}

impl QueueSpec {
    pub fn field_table(&self) -> FieldTable {
        let mut table = FieldTable::default();
        let kind = match self.kind {
            QueueKind::Quorum => "quorum",
        };
        table.insert("x-queue-type".into(), text(kind));
        for (k, v) in &self.arguments {
            let value = match v {
                Arg::Text(s) => text(s),
                Arg::Int(n) => AMQPValue::LongLongInt(*n),
            };
            table.insert((*k).into(), value);
        }
        table
    }
}

impl Arg {
    fn to_json(&self) -> Value {
        match self {
            Arg::Text(s) => json!(s),
            Arg::Int(n) => json!(n),
        }
    }
}

/// A header or argument value holding text.
pub fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

/// The headers without those `dropped` names (FieldTable has no remove).
pub fn headers_without(headers: &FieldTable, dropped: impl Fn(&str) -> bool) -> FieldTable {
    let kept: std::collections::BTreeMap<_, _> = headers
        .inner()
        .iter()
        .filter(|(k, _)| !dropped(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    FieldTable::from(kept)
}

/// Reads a header as text, whichever string type the publisher used.
pub fn header_text(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

/// Reads a header as a whole number, whichever integer type the publisher used.
pub fn header_int(headers: &FieldTable, key: &str) -> Option<i64> {
    match headers.inner().get(key)? {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// A short string from text that may be longer than AMQP allows (255 bytes): cut at
/// a character boundary rather than panicking.
pub fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        let d = |s| Duration::from_secs(s);
        Topology::new("cxone", &[d(5), d(30), d(120), d(600), d(600)])
    }

    #[test]
    fn names_follow_the_contract() {
        let t = topo();
        assert_eq!(t.jobs(), "cxone.jobs");
        assert_eq!(t.results(), "cxone.results");
        assert_eq!(t.audit(), "cxone.audit");
        assert_eq!(t.dlx(), "cxone.dlx");
        assert_eq!(t.dlq(), "cxone.jobs.dlq");
        let retry: Vec<String> = t
            .queues()
            .into_iter()
            .filter(|q| q.role == "retry")
            .map(|q| q.name)
            .collect();
        assert_eq!(
            retry,
            [
                "cxone.retry.5s",
                "cxone.retry.30s",
                "cxone.retry.2m",
                "cxone.retry.10m"
            ]
        );
        assert!(t.is_retry_queue("cxone.retry.2m"));
        assert!(!t.is_retry_queue("cxone.retry.soon"));
        assert!(!t.is_retry_queue("other.retry.2m"));
    }

    #[test]
    fn retry_queues_dead_letter_to_the_jobs_queue() {
        let t = topo();
        let q = t
            .queues()
            .into_iter()
            .find(|q| q.name == "cxone.retry.30s")
            .unwrap();
        assert!(q.arguments.contains(&("x-message-ttl", Arg::Int(30_000))));
        assert!(
            q.arguments
                .contains(&("x-dead-letter-exchange", Arg::Text(String::new())))
        );
        assert!(
            q.arguments
                .contains(&("x-dead-letter-routing-key", Arg::Text("cxone.jobs".into())))
        );
        let jobs = &t.queues()[0];
        assert!(
            jobs.arguments
                .contains(&("x-delivery-limit", Arg::Int(JOBS_DELIVERY_LIMIT)))
        );
        assert!(
            jobs.arguments
                .contains(&("x-dead-letter-exchange", Arg::Text("cxone.dlx".into())))
        );
    }

    /// The shipped definitions file is this module's output, not a copy kept by hand.
    #[test]
    fn deploy_definitions_match_the_code() {
        let shipped: Value = serde_json::from_str(include_str!(
            "../../deploy/rabbitmq/rabbitmq-definitions.json"
        ))
        .unwrap();
        assert_eq!(shipped, topo().definitions("/"));
    }

    #[test]
    fn headers_read_any_integer_or_string_type() {
        let mut h = FieldTable::default();
        h.insert("a".into(), AMQPValue::LongInt(3));
        h.insert("b".into(), AMQPValue::ShortShortUInt(4));
        h.insert("c".into(), text("5"));
        h.insert("d".into(), text("exec-1"));
        assert_eq!(header_int(&h, "a"), Some(3));
        assert_eq!(header_int(&h, "b"), Some(4));
        assert_eq!(header_int(&h, "c"), Some(5));
        assert_eq!(header_int(&h, "missing"), None);
        assert_eq!(header_text(&h, "d").as_deref(), Some("exec-1"));
    }

    #[test]
    fn short_strings_never_panic() {
        assert_eq!(short(&"é".repeat(200)).as_str().len(), 254);
        assert_eq!(short("abc").as_str(), "abc");
    }
}
