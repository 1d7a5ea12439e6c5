//! One delivery's life in its own task: the worker decides, the outputs are
//! published and confirmed, and the task says how the delivery must be settled.

use std::sync::Arc;

use lapin::BasicProperties;
use tracing::Instrument;

use super::consumer::Consumer;
use super::incoming::incoming;
use super::outputs::{self, Original};
use super::publisher::{Outgoing, Publisher};
use super::topology::Topology;
use super::trace;
use crate::job::Systemic;
use crate::outcome::{Outcome, Report, Stage};
use crate::telemetry::{chain, names};
use crate::worker::StageSink;

/// How a job's task ended; the session settles the delivery accordingly.
pub(super) enum TaskEnd {
    /// Every output confirmed: acknowledge.
    Ack,
    /// Not the job's fault: hand it back and pause. With a replacement when the job
    /// made progress the original delivery does not carry (see `Ledger::hand_back`).
    HandBack {
        cause: Systemic,
        error: String,
        replacement: Option<Box<Outgoing>>,
    },
    /// An output was not confirmed: hand the job back and rebuild the session.
    PublishFailed(String),
}

/// Processes one delivery and publishes what it became.
pub(super) async fn process(
    c: Arc<Consumer>,
    publisher: Publisher,
    body: Vec<u8>,
    properties: BasicProperties,
) -> TaskEnd {
    let _in_flight = InFlight::new();
    let started = tokio::time::Instant::now();
    let (span, context) = trace::delivery_span(&c.topology.jobs(), &properties);
    let job = incoming(&c.state_key, body, &properties);
    let stages = Stages {
        topology: &c.topology,
        enabled: c.audit_all,
        events: std::sync::Mutex::new(Vec::new()),
    };
    // The job's context for what it calls (the API) as it runs.
    let processing = c.worker.process(&job, &stages).instrument(span.clone());
    let report = context.clone().scope(processing).await;
    let original = Original {
        body: &job.body,
        properties: &properties,
    };
    let end = settle(&c, &publisher, &report, &original, stages, &context)
        .instrument(span)
        .await;
    let duration = match (&end, &report.outcome) {
        (TaskEnd::Ack, Outcome::Succeeded) => {
            crate::hot!(histogram, names::JOB_DURATION, "outcome" => "succeeded")
        }
        (TaskEnd::Ack, Outcome::Failed { .. }) => {
            crate::hot!(histogram, names::JOB_DURATION, "outcome" => "failed")
        }
        (TaskEnd::Ack, Outcome::Retry { .. }) => {
            crate::hot!(histogram, names::JOB_DURATION, "outcome" => "retried")
        }
        _ => crate::hot!(histogram, names::JOB_DURATION, "outcome" => "handed_back"),
    };
    duration.record(started.elapsed().as_secs_f64());
    end
}

async fn settle(
    c: &Consumer,
    publisher: &Publisher,
    report: &Report,
    original: &Original<'_>,
    stages: Stages<'_>,
    context: &crate::trace::Context,
) -> TaskEnd {
    if let Outcome::HandBack { cause, error } = &report.outcome {
        let replacement = report
            .progressed()
            .then(|| {
                let mut copy = [outputs::fresh_copy(
                    &c.topology,
                    &c.state_key,
                    original,
                    &report.state,
                )];
                trace::inject(context, &mut copy);
                let [copy] = copy;
                copy
            })
            .map(Box::new);
        return TaskEnd::HandBack {
            cause: *cause,
            error: error.clone(),
            replacement,
        };
    }
    let mut messages = stages
        .events
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    messages.extend(outputs::messages(
        &c.topology,
        &c.state_key,
        report,
        original,
    ));
    trace::inject(context, &mut messages);
    match publisher.publish_all(messages).await {
        Ok(()) => TaskEnd::Ack,
        Err(e) => {
            tracing::error!(job_id = %report.job_id, error = %chain(&e), "publishing the outcome failed; handing the job back");
            TaskEnd::PublishFailed(e.to_string())
        }
    }
}

/// Collects the stage events of `AUDIT_EVENTS=all`; they are published, in order,
/// with the job's other outputs.
struct Stages<'a> {
    topology: &'a Topology,
    enabled: bool,
    events: std::sync::Mutex<Vec<Outgoing>>,
}

impl StageSink for Stages<'_> {
    fn reached(&self, report: &Report, stage: Stage) {
        if self.enabled {
            let event = outputs::audit(self.topology, &report.event(stage.as_str()));
            self.events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(event);
        }
    }
}

/// Counts a job in the in-flight gauge for as long as it lives.
struct InFlight;

impl InFlight {
    fn new() -> Self {
        crate::hot!(gauge, names::IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::hot!(gauge, names::IN_FLIGHT).decrement(1.0);
    }
}
