//! The state a job carries from one delivery to the next (attempts, the execution
//! mark, storage failures, returns, replays, chunk progress), and the rule that makes
//! it trustworthy: the worker believes it only on copies it wrote itself for that
//! very message.
//!
//! Producers write to `P.jobs`; only the worker writes retry, hand-back and DLQ
//! copies. A producer may copy any header it saw on such a copy, so headers alone
//! prove nothing. The state therefore travels as one JSON header (`x-cxone-state`,
//! readable in the management UI; names in `broker::topology::headers`) with an
//! HMAC-SHA256 beside it (`x-cxone-state-sig`) over the message's body, its `message_id` (which, with
//! the body, makes the idempotency key) and the state's exact bytes. The key is
//! derived from the OAuth client secret, which every replica already holds, and the
//! queue prefix. A state whose signature does not check out is ignored, whatever it
//! says: the message is a new job, executed with its full `MAX_ATTEMPTS`. A rotated
//! secret only resets the state of copies in flight, and their unchanged
//! idempotency key keeps the API from running them twice (where the API honours
//! it; see the README on Genesys).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// States longer than this are not even parsed. The worker's own stay far below
/// (a job has at most [`MAX_CHUNKS`] chunk ids).
const MAX_STATE_BYTES: usize = 96 * 1024;

/// Chunks one job may be sent in: their execution ids travel in the state header,
/// and a header must fit in one AMQP frame (128 KiB by default).
pub const MAX_CHUNKS: usize = 1024;

/// What earlier deliveries of a job left for the next one. Every field starts at
/// its default for a job nobody has touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobState {
    /// Execute calls made for the job, every chunk counted: what results report.
    #[serde(skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Calls made for the current step (the whole file, or the next chunk): what
    /// `MAX_ATTEMPTS` bounds.
    #[serde(skip_serializing_if = "is_zero")]
    pub step_attempts: u32,
    /// The action ran (every chunk of it): only the storage record is left. Kept
    /// apart from the id because an API may answer success without one.
    #[serde(skip_serializing_if = "is_false")]
    pub executed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// Execution ids of the chunks executed so far, in order; its length is the
    /// index of the next chunk to send.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Option<String>>,
    /// The chunk size and the whole file's SHA-256 the executed chunks were cut
    /// with: a retry goes on with the same chunks, and a file that changed since
    /// cannot be finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_sha256: Option<String>,
    /// Storage writes that failed after the execution succeeded.
    #[serde(skip_serializing_if = "is_zero")]
    pub sync_failures: u32,
    /// Returns to the jobs queue (pauses, shutdowns) that the broker no longer
    /// counts, because the job was handed back as a fresh copy.
    #[serde(skip_serializing_if = "is_zero")]
    pub returns: u64,
    /// Times the job came back from the DLQ.
    #[serde(skip_serializing_if = "is_zero")]
    pub replays: u32,
    /// Written on DLQ copies: should this copy come back to the jobs queue (a
    /// replay, by `dlq replay` or by hand), it starts over with full attempts and
    /// counts one more replay; the execution mark and chunks stay, so a replay
    /// never runs the action again.
    #[serde(skip_serializing_if = "is_false")]
    pub dead: bool,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl JobState {
    /// The state a delivery starts from: a dead letter that came back starts over.
    pub fn revived(mut self) -> Self {
        if self.dead {
            self.dead = false;
            self.replays = self.replays.saturating_add(1);
            self.step_attempts = 0;
            self.sync_failures = 0;
        }
        self
    }

    /// The state a DLQ copy carries: counts restart (a replay gets full attempts),
    /// progress stays.
    pub fn for_dead_letter(&self) -> Self {
        JobState {
            step_attempts: 0,
            sync_failures: 0,
            dead: true,
            ..self.clone()
        }
    }

    /// An execute call of the current step went out and failed.
    pub fn charge_attempt(&mut self) {
        self.attempts = self.attempts.saturating_add(1);
        self.step_attempts = self.step_attempts.saturating_add(1);
    }

    /// The current step's call succeeded: the whole file (`chunk_count` `None`), or
    /// the next of `chunk_count` chunks. The action counts as run once every chunk is.
    pub fn step_done(&mut self, execution_id: Option<String>, chunk_count: Option<usize>) {
        self.attempts = self.attempts.saturating_add(1);
        self.step_attempts = 0;
        match chunk_count {
            None => {
                self.executed = true;
                self.execution_id = execution_id;
            }
            Some(count) => {
                self.chunks.push(execution_id.clone());
                if self.chunks.len() >= count {
                    self.executed = true;
                    self.execution_id = execution_id;
                }
            }
        }
    }

    /// Nothing worth carrying: a copy with this state needs no state headers.
    pub fn is_fresh(&self) -> bool {
        *self == JobState::default()
    }
}

/// What a delivery's state headers turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// No state headers: a job as a producer sent it.
    None,
    /// Written by this worker for this very message.
    Trusted(JobState),
    /// Present but not ours for this message (copied, forged, signed with an older
    /// secret, or malformed): ignored.
    Untrusted,
}

/// Signs and checks job states; one per process, derived at start.
#[derive(Clone)]
pub struct StateKey(Secret<[u8; 32]>);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(***)")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl StateKey {
    /// The key of a deployment: from the client secret every replica holds, and the
    /// queue prefix, so that two deployments sharing a secret do not trust each
    /// other's copies.
    pub fn derive(client_secret: &Secret<String>, prefix: &str) -> Self {
        let mut mac = HmacSha256::new_from_slice(client_secret.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"cxone-worker job state v1\0");
        mac.update(prefix.as_bytes());
        Self(Secret::new(mac.finalize().into_bytes().into()))
    }

    fn mac(&self, body: &[u8], message_id: Option<&str>, state: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(self.0.expose()).expect("HMAC takes a key of any length");
        // Fixed-size and length-prefixed parts: no two inputs run together.
        mac.update(&Sha256::digest(body));
        match message_id {
            Some(id) => {
                mac.update(&[1]);
                mac.update(&(id.len() as u64).to_be_bytes());
                mac.update(id.as_bytes());
            }
            None => mac.update(&[0]),
        }
        mac.update(state);
        mac
    }

    /// The two header values for `state` on a copy of the message (`body`,
    /// `message_id`).
    pub fn sign(
        &self,
        state: &JobState,
        body: &[u8],
        message_id: Option<&str>,
    ) -> (String, String) {
        // A plain struct always serializes.
        let json = serde_json::to_string(state).expect("job state json");
        let tag = self.mac(body, message_id, json.as_bytes()).finalize();
        (json, hex::encode(tag.into_bytes()))
    }

    /// Checks state headers read off a delivery (`None` where a header is absent or
    /// not text).
    pub fn verify(
        &self,
        state: Option<&[u8]>,
        signature: Option<&[u8]>,
        body: &[u8],
        message_id: Option<&str>,
    ) -> Read {
        let (state, signature) = match (state, signature) {
            (None, None) => return Read::None,
            (Some(s), Some(g)) if s.len() <= MAX_STATE_BYTES && g.len() == 64 => (s, g),
            _ => return Read::Untrusted,
        };
        let Ok(tag) = hex::decode(signature) else {
            return Read::Untrusted;
        };
        // Constant time: the comparison says nothing about how close a forgery came.
        if self
            .mac(body, message_id, state)
            .verify_slice(&tag)
            .is_err()
        {
            return Read::Untrusted;
        }
        match serde_json::from_slice::<JobState>(state) {
            Ok(s) if s.chunks.len() <= MAX_CHUNKS => Read::Trusted(s),
            // Signed by us yet unreadable: written by another version. Start over.
            _ => Read::Untrusted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str, prefix: &str) -> StateKey {
        StateKey::derive(&Secret::new(secret.into()), prefix)
    }

    fn state() -> JobState {
        JobState {
            attempts: 2,
            step_attempts: 2,
            executed: true,
            execution_id: Some("exec-1".into()),
            sync_failures: 1,
            ..JobState::default()
        }
    }

    fn check(k: &StateKey, signed: &(String, String), body: &[u8], id: Option<&str>) -> Read {
        k.verify(
            Some(signed.0.as_bytes()),
            Some(signed.1.as_bytes()),
            body,
            id,
        )
    }

    #[test]
    fn a_state_checks_out_only_for_its_own_message() {
        let k = key("secret", "cxone");
        let signed = k.sign(&state(), b"{job}", Some("m-1"));
        assert_eq!(
            check(&k, &signed, b"{job}", Some("m-1")),
            Read::Trusted(state())
        );
        assert_eq!(check(&k, &signed, b"{other}", Some("m-1")), Read::Untrusted);
        assert_eq!(check(&k, &signed, b"{job}", Some("m-2")), Read::Untrusted);
        assert_eq!(check(&k, &signed, b"{job}", None), Read::Untrusted);
        assert_eq!(
            check(&key("rotated", "cxone"), &signed, b"{job}", Some("m-1")),
            Read::Untrusted
        );
        assert_eq!(
            check(&key("secret", "other"), &signed, b"{job}", Some("m-1")),
            Read::Untrusted
        );
    }

    #[test]
    fn an_edited_state_is_untrusted() {
        let k = key("secret", "cxone");
        let (json, sig) = k.sign(&state(), b"{job}", None);
        let edited = json.replace("\"attempts\":2", "\"attempts\":0");
        assert_ne!(edited, json);
        assert_eq!(
            check(&k, &(edited, sig.clone()), b"{job}", None),
            Read::Untrusted
        );
        for bad_sig in ["", "zz", &"0".repeat(64), &sig.to_uppercase()[..63]] {
            assert_eq!(
                check(&k, &(json.clone(), bad_sig.to_owned()), b"{job}", None),
                Read::Untrusted,
                "{bad_sig:?}"
            );
        }
        assert_eq!(
            k.verify(Some(json.as_bytes()), None, b"{job}", None),
            Read::Untrusted
        );
        assert_eq!(k.verify(None, None, b"{job}", None), Read::None);
    }

    #[test]
    fn the_default_state_is_an_empty_object() {
        let k = key("s", "p");
        assert_eq!(k.sign(&JobState::default(), b"", None).0, "{}");
        assert!(JobState::default().is_fresh() && !state().is_fresh());
    }

    #[test]
    fn a_dead_letter_starts_over_but_keeps_its_progress() {
        let dead = state().for_dead_letter();
        assert!(dead.dead && dead.step_attempts == 0 && dead.sync_failures == 0);
        let back = dead.revived();
        assert_eq!(back.replays, 1);
        assert!(!back.dead && back.executed);
        assert_eq!(back.execution_id.as_deref(), Some("exec-1"));
        assert_eq!(back.attempts, 2, "the total still counts every call");
        assert_eq!(state().revived(), state(), "a live copy is left alone");
    }

    #[test]
    fn chunks_complete_the_execution_one_by_one() {
        let mut s = JobState::default();
        s.charge_attempt();
        s.step_done(Some("c0".into()), Some(2));
        assert!(!s.executed && s.step_attempts == 0 && s.attempts == 2);
        s.step_done(Some("c1".into()), Some(2));
        assert!(s.executed);
        assert_eq!(s.execution_id.as_deref(), Some("c1"));
        assert_eq!(s.chunks, [Some("c0".into()), Some("c1".into())]);
    }

    #[test]
    fn counts_saturate() {
        let mut s = JobState {
            replays: u32::MAX,
            dead: true,
            ..JobState::default()
        };
        s = s.revived();
        assert_eq!(s.replays, u32::MAX);
    }
}
