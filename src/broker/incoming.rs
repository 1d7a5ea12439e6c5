//! A delivery -> what the job logic needs of it: body, `message_id`, and the state
//! earlier deliveries left, believed only when this worker signed it for this very
//! message (see `state`). Headers are producers' input: any type, any size.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::topology::headers;
use crate::state::{JobState, Read, StateKey};
use crate::telemetry::names;
use crate::worker::Incoming;

/// The job as the worker sees it.
pub fn incoming(key: &StateKey, body: Vec<u8>, properties: &BasicProperties) -> Incoming {
    let message_id = properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned());
    let state = read_state(key, properties, &body, message_id.as_deref());
    Incoming {
        body,
        message_id,
        state,
    }
}

/// The job's trusted state, or a new job's when there is none to trust.
pub fn read_state(
    key: &StateKey,
    properties: &BasicProperties,
    body: &[u8],
    message_id: Option<&str>,
) -> JobState {
    let Some(h) = properties.headers() else {
        return JobState::default();
    };
    let read = key.verify(
        text_bytes(h, headers::STATE),
        text_bytes(h, headers::STATE_SIGNATURE),
        body,
        message_id,
    );
    let forged_legacy = headers::LEGACY.iter().any(|k| h.inner().contains_key(*k));
    match read {
        Read::Trusted(state) => state.revived(),
        Read::None if !forged_legacy => JobState::default(),
        Read::None | Read::Untrusted => {
            // Not ours for this message: a copied header, a forgery, a copy signed
            // with a secret since rotated, or one from a version before the signed
            // state. The job starts over under its unchanged idempotency key.
            metrics::counter!(names::UNTRUSTED_STATE).increment(1);
            tracing::info!(
                "ignoring worker state headers not written by this worker for this message; the job runs as new"
            );
            JobState::default()
        }
    }
}

/// A header's bytes when it holds text of either string type; `None` otherwise
/// (absent, a number, a table…), which makes a state untrusted, never a panic.
fn text_bytes<'a>(h: &'a FieldTable, key: &str) -> Option<&'a [u8]> {
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::topology::text;
    use crate::config::Secret;

    fn key() -> StateKey {
        StateKey::derive(&Secret::new("secret".into()), "p")
    }

    fn with(pairs: Vec<(&str, AMQPValue)>) -> BasicProperties {
        let mut h = FieldTable::default();
        for (k, v) in pairs {
            h.insert(k.into(), v);
        }
        BasicProperties::default().with_headers(h)
    }

    #[test]
    fn only_a_signed_state_for_this_body_counts() {
        let state = JobState {
            attempts: 3,
            step_attempts: 3,
            ..JobState::default()
        };
        let (json, sig) = key().sign(&state, b"{a}", None);
        let props = with(vec![
            (headers::STATE, text(&json)),
            (headers::STATE_SIGNATURE, text(&sig)),
        ]);
        assert_eq!(read_state(&key(), &props, b"{a}", None), state);
        assert_eq!(
            read_state(&key(), &props, b"{b}", None),
            JobState::default()
        );
    }

    #[test]
    fn hostile_values_of_every_type_are_a_new_job() {
        let mut nested = FieldTable::default();
        for _ in 0..50 {
            let mut outer = FieldTable::default();
            outer.insert("n".into(), AMQPValue::FieldTable(nested));
            nested = outer;
        }
        let values = [
            text("99"),
            text(""),
            AMQPValue::LongLongInt(-1),
            AMQPValue::LongLongInt(i64::MAX),
            AMQPValue::LongUInt(u32::MAX),
            AMQPValue::Double(1e300),
            AMQPValue::Float(f32::NAN),
            AMQPValue::Boolean(true),
            AMQPValue::FieldTable(nested),
            AMQPValue::FieldArray(vec![AMQPValue::LongInt(1)].into()),
            AMQPValue::Void,
            text(&"x".repeat(200_000)),
        ];
        for header in headers::OWNED {
            for value in &values {
                let props = with(vec![(header, value.clone())]);
                assert_eq!(
                    read_state(&key(), &props, b"{a}", None),
                    JobState::default(),
                    "{header} = {value:?}"
                );
            }
        }
    }
}
