//! Value types and parsers shared by the settings: secrets, broker URLs, lists.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::text::redact_url;

/// A value that must never reach a log, an audit event, a result or a DLQ header.
///
/// `Debug` and `Display` print `***`; the only way to the value is [`Secret::expose`],
/// which makes every use easy to find.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The broker: one URL, or the nodes of a cluster as a comma list, each a full
/// `amqp(s)://` URL (a comma inside a URL is written `%2C`). Every URL stays secret
/// (passwords included); the redacted list (`amqp://guest:***@a:5672/%2f,amqp://…@b/`)
/// is what logs and `Debug` show.
///
/// Connections go through the nodes in turn: [`AmqpUrl::rotation`] starts at the node
/// that worked last, or at the one after the node that failed last. Clones share that
/// place, so the consumer, the fleet link and a reconnection all move on together.
#[derive(Clone)]
pub struct AmqpUrl {
    nodes: Arc<[Node]>,
    redacted: String,
    next: Arc<AtomicUsize>,
}

/// One broker node of an [`AmqpUrl`].
#[derive(Clone)]
pub struct Node {
    full: Secret<String>,
    redacted: String,
}

impl Node {
    fn parse(raw: &str) -> Result<Self, String> {
        let url = url::Url::parse(raw)
            .map_err(|e| format!("{:?} is not a URL ({e})", redact_url(raw)))?;
        if !matches!(url.scheme(), "amqp" | "amqps") {
            return Err(format!(
                "{:?} must start with amqp:// or amqps://",
                redact_url(raw)
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{:?} has no host", redact_url(raw)));
        }
        Ok(Self {
            full: Secret::new(raw.to_owned()),
            redacted: redact_url(raw),
        })
    }

    pub fn expose(&self) -> &str {
        self.full.expose()
    }

    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl AmqpUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let items = split_list(raw, ',');
        let nodes = match items.as_slice() {
            [one] => vec![Node::parse(one)?],
            _ => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    // An unencoded comma in a password splits it across two items:
                    // a bad item is named by its place, never echoed.
                    Node::parse(item).map_err(|_| {
                        format!(
                            "item {} of {} is not an amqp:// or amqps:// URL with a host \
                             (a comma inside a URL is written %2C)",
                            i + 1,
                            items.len()
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if nodes.is_empty() {
            return Err("names no broker".into());
        }
        let redacted = nodes
            .iter()
            .map(|n| n.redacted.as_str())
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            nodes: nodes.into(),
            redacted,
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Every node once, starting where the last connection left off, each with its
    /// index for [`AmqpUrl::connected`] and [`AmqpUrl::failed`].
    pub fn rotation(&self) -> impl Iterator<Item = (usize, &Node)> {
        let n = self.nodes.len();
        let start = self.next.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| {
            let index = (start + i) % n;
            (index, &self.nodes[index])
        })
    }

    /// Node `index` took a connection: the next connection starts there.
    pub fn connected(&self, index: usize) {
        self.next.store(index, Ordering::Relaxed);
    }

    /// Node `index` failed: the next connection starts at the one after it, even
    /// when this attempt is abandoned half-way through the list.
    pub fn failed(&self, index: usize) {
        self.next
            .store((index + 1) % self.nodes.len(), Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: parsing refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// Splits a separated list, trimming items and dropping empty ones.
pub fn split_list(raw: &str, sep: char) -> Vec<String> {
    raw.split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn amqp_url_hides_password() {
        let u = AmqpUrl::parse("amqp://guest:p%40ss@rabbit:5672/%2f").unwrap();
        assert_eq!(u.redacted(), "amqp://guest:***@rabbit:5672/%2f");
        assert_eq!(format!("{u:?}"), "amqp://guest:***@rabbit:5672/%2f");
        assert!(!format!("{u}").contains("p%40ss"));
        let (_, node) = u.rotation().next().unwrap();
        assert_eq!(node.expose(), "amqp://guest:p%40ss@rabbit:5672/%2f");
    }

    #[test]
    fn a_list_names_the_nodes_of_a_cluster_redacted() {
        let u = AmqpUrl::parse(" amqp://u:s3cret@a:5672/%2f , amqps://u:s3cret@b/vh,").unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u.redacted(), "amqp://u:***@a:5672/%2f,amqps://u:***@b/vh");
        assert_eq!(format!("{u:?} {u}").matches("s3cret").count(), 0);
        let err = AmqpUrl::parse("amqp://a/,http://u:s3cret@b/").unwrap_err();
        assert!(
            err.starts_with("item 2 of 2") && !err.contains("s3cret"),
            "{err}"
        );
        // A comma typed inside a password never brings a piece of it into the error.
        let err = AmqpUrl::parse("amqp://u:Se,CrEt@host/").unwrap_err();
        assert!(!err.contains("Se") && !err.contains("CrEt"), "{err}");
        assert_eq!(AmqpUrl::parse(" , ").unwrap_err(), "names no broker");
    }

    #[test]
    fn connections_go_through_the_nodes_in_turn() {
        let u = AmqpUrl::parse("amqp://a/,amqp://b/,amqp://c/").unwrap();
        let order = |u: &AmqpUrl| -> Vec<String> {
            u.rotation().map(|(_, n)| n.redacted().to_owned()).collect()
        };
        assert_eq!(order(&u), ["amqp://a/", "amqp://b/", "amqp://c/"]);
        // a fails, b takes the connection: the next one starts at b, for every clone.
        let clone = u.clone();
        u.failed(0);
        u.connected(1);
        assert_eq!(order(&clone), ["amqp://b/", "amqp://c/", "amqp://a/"]);
        // An attempt abandoned after c failed resumes at a.
        clone.failed(2);
        assert_eq!(order(&u)[0], "amqp://a/");
    }

    #[test]
    fn amqp_url_errors_never_echo_the_password() {
        let err = AmqpUrl::parse("http://u:topsecret@host/").unwrap_err();
        assert!(!err.contains("topsecret"), "{err}");
        let err = AmqpUrl::parse("amqp://u:topsecret@").unwrap_err();
        assert!(!err.contains("topsecret"), "{err}");
    }

    #[test]
    fn passwords_with_url_delimiters_are_masked_whole() {
        for (raw, shown) in [
            ("amqp://u:Se/CrEt@host/vh", "amqp://u:***@host/vh"),
            ("amqp://u:Se?CrEt@host", "amqp://u:***@host"),
            (
                "amqp://u:Se#CrEt@host:5672/%2f",
                "amqp://u:***@host:5672/%2f",
            ),
            ("amqps://u:Se@CrEt@host/", "amqps://u:***@host/"),
            ("amqp://u/ser:SeCrEt@host/vh", "amqp://u/ser:***@host/vh"),
            ("amqp://u:@host/", "amqp://u:***@host/"),
        ] {
            assert_eq!(redact_url(raw), shown, "{raw}");
            // No piece of the password, whether the URL parses or not.
            let said = match AmqpUrl::parse(raw) {
                Ok(u) => format!("{u} {u:?}"),
                Err(e) => e,
            };
            for piece in ["Se", "CrEt"] {
                assert!(!said.contains(piece), "{raw} -> {said}");
            }
        }
    }

    #[test]
    fn lists() {
        assert_eq!(split_list(" a, b,,c ", ','), ["a", "b", "c"]);
        assert!(split_list("", ':').is_empty());
    }
}
