//! The fleet's messages on `P.control`: what each says, its AMQP `type`, and reading
//! one that anybody able to publish there may have written.

use serde::{Deserialize, Serialize};

/// AMQP `type` of a member's periodic announcement.
pub(crate) const HEARTBEAT: &str = "fleet.heartbeat";
/// AMQP `type` of a pause that the API asked one member for.
pub(crate) const PAUSE: &str = "fleet.pause";
/// AMQP `type` of a member's goodbye at shutdown.
pub(crate) const LEAVE: &str = "fleet.leave";

/// Bodies larger than this are not a member's: ignored unread.
const MAX_BODY: usize = 4096;
/// A member id is a UUID; anything much longer is not one of ours.
const MAX_ID: usize = 64;

/// The units a member may use now or in the near future, and so asks the others to
/// leave to it: never less than what it uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    /// Calls per second (per window, below 60 a minute) of the rate budget.
    pub(crate) rate: u32,
    /// Calls in flight.
    pub(crate) calls: u32,
}

/// "I am here, these are my limits and my claims": every second, and at once when a
/// claim goes down or a new member appears.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub(crate) member: String,
    /// `host:pid`, for operators reading logs.
    pub(crate) name: String,
    /// Counts this member's heartbeats: it recognises the echo of its own.
    pub(crate) seq: u64,
    /// The turn the sender is in; the leader's is the fleet's.
    pub(crate) turn: u64,
    pub(crate) rate_limit_per_minute: u32,
    /// 0 = no limit.
    pub(crate) max_concurrent_calls: u32,
    pub(crate) claim: Claim,
    /// Members the sender knows, itself included.
    pub(crate) members: u32,
    /// Still listening before it takes a share.
    pub(crate) joining: bool,
}

/// "The API asked us all to wait this long": a duration, never an instant, since
/// members' clocks differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PauseNote {
    pub(crate) member: String,
    pub(crate) wait_ms: u64,
    /// `429` or `inin_ratelimit`.
    pub(crate) source: String,
}

/// "I stop now": sent once its calls are over; `claim` covers the calls still inside
/// the last window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Leave {
    pub(crate) member: String,
    pub(crate) claim: Claim,
}

/// A message of the fleet, read from `P.control`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Note {
    Heartbeat(Heartbeat),
    Pause(PauseNote),
    Leave(Leave),
}

impl Note {
    /// Reads a message of `P.control` by its AMQP `type`. `None` for anything else:
    /// `status` pings (no type), other types, bodies too large, bad JSON or ids. A
    /// message there is anyone's to write; nothing in it may panic the reader.
    pub(crate) fn read(kind: Option<&str>, body: &[u8]) -> Option<Note> {
        if body.len() > MAX_BODY {
            return None;
        }
        let note = match kind? {
            HEARTBEAT => Note::Heartbeat(serde_json::from_slice(body).ok()?),
            PAUSE => Note::Pause(serde_json::from_slice(body).ok()?),
            LEAVE => Note::Leave(serde_json::from_slice(body).ok()?),
            _ => return None,
        };
        let id = note.member();
        (!id.is_empty() && id.len() <= MAX_ID).then_some(note)
    }

    pub(crate) fn member(&self) -> &str {
        match self {
            Note::Heartbeat(h) => &h.member,
            Note::Pause(p) => &p.member,
            Note::Leave(l) => &l.member,
        }
    }

    /// The AMQP `type` and the JSON body this note is sent as.
    pub(crate) fn encode(&self) -> (&'static str, Vec<u8>) {
        // Plain structs of numbers and strings: serializing cannot fail.
        let (kind, body) = match self {
            Note::Heartbeat(h) => (HEARTBEAT, serde_json::to_vec(h)),
            Note::Pause(p) => (PAUSE, serde_json::to_vec(p)),
            Note::Leave(l) => (LEAVE, serde_json::to_vec(l)),
        };
        (kind, body.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            member: "m1".into(),
            name: "host:1".into(),
            seq: 3,
            turn: 9,
            rate_limit_per_minute: 600,
            max_concurrent_calls: 4,
            claim: Claim { rate: 4, calls: 2 },
            members: 3,
            joining: false,
        }
    }

    #[test]
    fn notes_go_and_come_back_by_their_type() {
        for note in [
            Note::Heartbeat(heartbeat()),
            Note::Pause(PauseNote {
                member: "m1".into(),
                wait_ms: 2000,
                source: "429".into(),
            }),
            Note::Leave(Leave {
                member: "m1".into(),
                claim: Claim::default(),
            }),
        ] {
            let (kind, body) = note.encode();
            assert_eq!(Note::read(Some(kind), &body), Some(note));
        }
    }

    #[test]
    fn anything_else_on_the_exchange_is_ignored_without_a_panic() {
        let (_, body) = Note::Heartbeat(heartbeat()).encode();
        assert_eq!(Note::read(None, b"status"), None, "a status ping");
        assert_eq!(Note::read(Some("fleet.other"), &body), None);
        assert_eq!(
            Note::read(Some(PAUSE), &body),
            None,
            "wrong shape for the type"
        );
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"[]",
            br#"{"member":"m","wait_ms":-1,"source":"429"}"#,
            br#"{"member":"m","wait_ms":1e400,"source":"429"}"#,
        ] {
            assert_eq!(Note::read(Some(PAUSE), bad), None, "{bad:?}");
        }
        let empty_id = br#"{"member":"","claim":{"rate":1,"calls":1}}"#;
        assert_eq!(Note::read(Some(LEAVE), empty_id), None);
        let long_id = format!(
            r#"{{"member":"{}","claim":{{"rate":1,"calls":1}}}}"#,
            "x".repeat(65)
        );
        assert_eq!(Note::read(Some(LEAVE), long_id.as_bytes()), None);
        let mut huge = body.clone();
        huge.extend(std::iter::repeat_n(b' ', MAX_BODY));
        assert_eq!(Note::read(Some(HEARTBEAT), &huge), None);
    }
}
