//! W3C Trace Context of a job: read from its headers, continued by the job and its
//! API calls, and written on everything sent for it.
//!
//! Context always travels, whether spans are exported or not. Exported
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`), the job and its calls are OpenTelemetry spans
//! and the context is theirs. Not exported, keeping OpenTelemetry spans only to
//! copy ids around cost the worker a fifth of its CPU per job, so the context is
//! kept here by hand: the parent's trace id, a fresh span id, the parent's flags
//! and `tracestate`.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Spans are exported: set once at start by `telemetry::init`.
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// One span's place in a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
    state: Option<String>,
}

tokio::task_local! {
    /// The context of the job a task is processing (the broker's delivery sets it).
    static JOB: Context;
}

impl Context {
    /// A `traceparent` (version 00, or a later one read as 00 allows) and its
    /// `tracestate`; `None` for anything W3C Trace Context calls invalid.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex = |s: &str, len| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(version, 2)
            || version == "ff"
            || !lower_hex(trace, 32)
            || !lower_hex(span, 16)
            || !lower_hex(flags, 2)
            || (version == "00" && parts.next().is_some())
        {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let state = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 512 && s.is_ascii())
            .map(str::to_owned);
        Some(Context {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
            state,
        })
    }

    /// A new span: in `parent`'s trace, with its flags and state; else a new trace,
    /// not sampled (nobody records it).
    pub fn child_of(parent: Option<&Context>) -> Context {
        let span_id = nonzero(rand::random::<[u8; 8]>());
        match parent {
            Some(p) => Context {
                span_id,
                ..p.clone()
            },
            None => Context {
                trace_id: nonzero(rand::random::<[u8; 16]>()),
                span_id,
                sampled: false,
                state: None,
            },
        }
    }

    /// The context of an OpenTelemetry span (exported mode).
    pub fn of_span(span: &tracing::Span) -> Option<Context> {
        let context = span.context();
        let sc = context.span().span_context().clone();
        sc.is_valid().then(|| Context {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            sampled: sc.is_sampled(),
            state: Some(sc.trace_state().header()).filter(|s| !s.is_empty()),
        })
    }

    /// As an OpenTelemetry remote parent (exported mode).
    pub fn to_otel(&self) -> opentelemetry::Context {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let state = self
            .state
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let sc = SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(self.trace_id),
            opentelemetry::trace::SpanId::from_bytes(self.span_id),
            flags,
            true,
            state,
        );
        opentelemetry::Context::new().with_remote_span_context(sc)
    }

    /// `00-{trace id}-{span id}-{flags}`, written in one go: it goes on every
    /// message and call of every job.
    pub fn traceparent(&self) -> String {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex_into(&self.span_id, &mut out[36..52]);
        out[52..54].copy_from_slice(b"-0");
        out[54] = if self.sampled { b'1' } else { b'0' };
        String::from_utf8(out.to_vec()).expect("ascii")
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex::encode(self.span_id)
    }

    /// Runs `f` (a job's processing) with this as the job's context.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        JOB.scope(self, f).await
    }

    /// The context of the job the current task processes.
    pub fn of_job() -> Option<Context> {
        JOB.try_with(Clone::clone).ok()
    }
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// All zeros is W3C's "invalid": a random draw of it is replaced.
fn nonzero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id == [0; N] {
        id[N - 1] = 1;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips() {
        let c = Context::parse(GOOD, Some("vendor=x")).unwrap();
        assert_eq!(c.traceparent(), GOOD);
        assert_eq!(c.tracestate(), Some("vendor=x"));
        let child = Context::child_of(Some(&c));
        assert_eq!(child.trace_id(), c.trace_id());
        assert_ne!(child.span_id(), c.span_id());
        assert!(
            child.traceparent().ends_with("-01"),
            "the parent's sampling stays"
        );
    }

    #[test]
    fn what_w3c_calls_invalid_is_no_parent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(Context::parse(bad, None), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(Context::parse(&format!("{}-more", GOOD.replacen("00", "01", 1)), None).is_some());
    }

    #[test]
    fn a_new_trace_is_not_sampled_and_never_zero() {
        let root = Context::child_of(None);
        assert!(root.traceparent().ends_with("-00"));
        assert_eq!(root.trace_id().len(), 32);
        assert_eq!(nonzero([0u8; 8]), [0, 0, 0, 0, 0, 0, 0, 1]);
    }
}
