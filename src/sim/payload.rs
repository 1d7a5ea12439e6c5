//! The execute body: find the payload where the profile's body shape puts it (the nested shape
//! as the reference does; the flat one in `flat.rs`), check its base64 strictly, and measure
//! and hash the decoded bytes without keeping them.

use std::borrow::Cow;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::chunk::ChunkFields;
use super::config::{DEFAULT_CONTENT_TYPE_FIELD, DEFAULT_PAYLOAD_FIELD};
use super::flat;
use super::profile::BodyShape;

/// Why a body is refused; each maps to one 400 answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not JSON at all.
    Json,
    /// Nested body: JSON, but no string `value` and content type under `inputs.<payload>`, or
    /// a `value` that is not strict padded base64 (the reference's one message for all).
    Payload,
    /// A problem with its own explanation: anything wrong with a flat body, chunk fields.
    Body(String),
}

/// The names of the payload and content-type fields (`SIM_PAYLOAD_FIELD`,
/// `SIM_CONTENT_TYPE_FIELD`).
#[derive(Debug, Clone)]
pub(crate) struct FieldNames {
    pub(crate) payload: String,
    pub(crate) content_type: String,
}

impl FieldNames {
    /// v1's names, which the fast typed parse of a nested body knows at compile time.
    fn are_default(&self) -> bool {
        self.payload == DEFAULT_PAYLOAD_FIELD && self.content_type == DEFAULT_CONTENT_TYPE_FIELD
    }
}

/// The parts of a valid body that the simulator records. `value` borrows from the body
/// unless the JSON escaped something in it (`\/` is legal JSON for `/`).
#[derive(Debug)]
pub(crate) struct Payload<'a> {
    pub(crate) value: Cow<'a, str>,
    pub(crate) content_type: Cow<'a, str>,
    /// Nested: `inputs.metadata`, `null` when absent. Flat: the object of every other key.
    pub(crate) metadata: Value,
    /// The chunk fields, when the body is one chunk of a larger file.
    pub(crate) chunk: Option<ChunkFields>,
}

impl BodyShape {
    /// Parses an execute body of this shape, with its payload's base64 checked.
    pub(crate) fn parse<'b>(
        self,
        body: &'b [u8],
        names: &FieldNames,
    ) -> Result<Payload<'b>, Invalid> {
        match self {
            Self::Nested => parse_nested(body, names),
            Self::Flat => flat::parse(body, names),
        }
    }
}

/// A nested body before its chunk fields are read.
struct Nested<'a> {
    value: Cow<'a, str>,
    content_type: Cow<'a, str>,
    metadata: Value,
    chunk: Option<Value>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    inputs: Inputs<'a>,
}

#[derive(Deserialize)]
struct Inputs<'a> {
    #[serde(borrow, rename = "binaryPayload")]
    binary_payload: Binary<'a>,
    #[serde(default)]
    metadata: Value,
    #[serde(default, deserialize_with = "present")]
    chunk: Option<Value>,
}

#[derive(Deserialize)]
struct Binary<'a> {
    #[serde(borrow)]
    value: Cow<'a, str>,
    #[serde(borrow, rename = "contentType")]
    content_type: Cow<'a, str>,
}

/// `Some` for any value, `null` included: a `chunk` key that is there but not an object is
/// refused, not taken for "no chunk".
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Parses a nested body the way the reference's `JSON.parse` + property checks do.
fn parse_nested<'b>(body: &'b [u8], names: &FieldNames) -> Result<Payload<'b>, Invalid> {
    // The typed parse borrows the (large) base64 string straight from the body, but knows only
    // v1's field names. It refuses some bodies that JavaScript takes (a repeated key, where the
    // last one wins; bytes that are not UTF-8), so a failure is judged again by the slower,
    // owning path, which also serves other field names.
    let typed = names
        .are_default()
        .then(|| serde_json::from_slice::<Envelope<'_>>(body).ok())
        .flatten();
    let nested = match typed {
        Some(Envelope { inputs }) => Nested {
            value: inputs.binary_payload.value,
            content_type: inputs.binary_payload.content_type,
            metadata: inputs.metadata,
            chunk: inputs.chunk,
        },
        None => parse_as_javascript(body, names)?,
    };
    if !is_strict_base64(&nested.value) {
        return Err(Invalid::Payload);
    }
    let chunk = nested.chunk.map(ChunkFields::from_nested).transpose();
    Ok(Payload {
        value: nested.value,
        content_type: nested.content_type,
        metadata: nested.metadata,
        chunk: chunk.map_err(Invalid::Body)?,
    })
}

/// `JSON.parse(body.toString())`: invalid UTF-8 becomes U+FFFD, a repeated key keeps its last
/// value, and any JSON that lacks the two strings is a payload error rather than a JSON error.
fn parse_as_javascript(body: &[u8], names: &FieldNames) -> Result<Nested<'static>, Invalid> {
    let text = String::from_utf8_lossy(body);
    let json: Value = serde_json::from_str(&text).map_err(|_| Invalid::Json)?;
    let Value::Object(mut json) = json else {
        return Err(Invalid::Payload);
    };
    let Some(Value::Object(mut inputs)) = json.remove("inputs") else {
        return Err(Invalid::Payload);
    };
    let Some(Value::Object(mut binary)) = inputs.remove(&names.payload) else {
        return Err(Invalid::Payload);
    };
    match (binary.remove("value"), binary.remove(&names.content_type)) {
        (Some(Value::String(value)), Some(Value::String(content_type))) => Ok(Nested {
            value: Cow::Owned(value),
            content_type: Cow::Owned(content_type),
            metadata: inputs.remove("metadata").unwrap_or(Value::Null),
            chunk: inputs.remove("chunk"),
        }),
        _ => Err(Invalid::Payload),
    }
}

/// The reference's test: `value.length % 4 == 0` and `^[A-Za-z0-9+/]*={0,2}$`.
pub(crate) fn is_strict_base64(value: &str) -> bool {
    let bytes = value.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return false;
    }
    let data = strip_padding(bytes);
    if bytes.len() - data.len() > 2 {
        return false;
    }
    // A fold without early exit over fixed blocks lets the compiler vectorise the test.
    data.chunks(64)
        .all(|block| block.iter().fold(true, |ok, &b| ok & in_alphabet(b)))
}

fn in_alphabet(b: u8) -> bool {
    b.is_ascii_alphanumeric() | (b == b'+') | (b == b'/')
}

fn strip_padding(bytes: &[u8]) -> &[u8] {
    let data_len = bytes.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    &bytes[..data_len]
}

/// Node's base64 decoder ignores the unused low bits of the last symbol ("QR==" is "A");
/// the strict check above already pins the padding, so only that leniency is needed.
const NODE_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Size and SHA-256 (hex) of the bytes a checked base64 value decodes to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Digest {
    pub(crate) size: u64,
    pub(crate) sha256: Option<String>,
}

/// Decoded size of a value that passed `is_strict_base64`, and its hash when `hash` is on.
/// Decodes block by block into a stack buffer, so no copy of the file is ever allocated.
pub(crate) fn digest(value: &str, hash: bool) -> Result<Digest, Invalid> {
    const SYMBOLS: usize = 4096;
    let bytes = value.as_bytes();
    let padding = bytes.len() - strip_padding(bytes).len();
    let size = (bytes.len() / 4 * 3).saturating_sub(padding) as u64;
    if !hash {
        return Ok(Digest { size, sha256: None });
    }
    let mut hasher = Sha256::new();
    let mut buf = [0u8; SYMBOLS / 4 * 3];
    let mut decoded = 0u64;
    for block in bytes.chunks(SYMBOLS) {
        let n = NODE_BASE64
            .decode_slice(block, &mut buf)
            .map_err(|_| Invalid::Payload)?;
        hasher.update(&buf[..n]);
        decoded += n as u64;
    }
    debug_assert_eq!(decoded, size, "size formula and decoder disagree");
    Ok(Digest {
        size: decoded,
        sha256: Some(hex::encode(hasher.finalize())),
    })
}

/// The bytes of a value that passed `is_strict_base64`, for a chunk: the simulator holds a
/// chunk's bytes (at most one request body) to check and reassemble it.
pub(crate) fn decode(value: &str) -> Result<Vec<u8>, Invalid> {
    NODE_BASE64.decode(value).map_err(|_| Invalid::Payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::prelude::BASE64_STANDARD;

    fn names(payload: &str, content_type: &str) -> FieldNames {
        FieldNames {
            payload: payload.into(),
            content_type: content_type.into(),
        }
    }

    fn parse(body: &[u8]) -> Result<Payload<'_>, Invalid> {
        BodyShape::Nested.parse(
            body,
            &names(DEFAULT_PAYLOAD_FIELD, DEFAULT_CONTENT_TYPE_FIELD),
        )
    }

    #[test]
    fn other_field_names_are_looked_for_and_v1_names_no_longer_count() {
        let custom = names("document", "mime");
        let custom_body =
            br#"{"inputs":{"document":{"value":"QUJD","mime":"a/b"},"metadata":{"k":1}}}"#;
        let p = BodyShape::Nested
            .parse(custom_body, &custom)
            .expect("custom names");
        assert_eq!((p.value.as_ref(), p.content_type.as_ref()), ("QUJD", "a/b"));
        let v1 = body("QUJD");
        assert_eq!(
            BodyShape::Nested.parse(v1.as_bytes(), &custom).err(),
            Some(Invalid::Payload)
        );
    }

    #[test]
    fn a_chunk_object_is_read_and_a_bad_one_refused() {
        let sha = hex::encode(Sha256::digest(b"ABC"));
        let chunk = format!(
            r#"{{"uploadId":"j","index":0,"count":1,"offset":0,"size":3,"totalSize":3,
            "sha256":"{sha}","fileSha256":"{sha}"}}"#
        );
        let with = |chunk: &str| {
            format!(
                r#"{{"inputs":{{"binaryPayload":{{"value":"QUJD","contentType":"a"}},"chunk":{chunk}}}}}"#
            )
        };
        let chunked = with(&chunk);
        let p = parse(chunked.as_bytes()).expect("chunk");
        assert_eq!(p.chunk.map(|c| c.size), Some(3));
        assert!(
            parse(body("QUJD").as_bytes())
                .expect("plain")
                .chunk
                .is_none()
        );
        for bad in ["null", "[]", r#"{"uploadId":"j"}"#] {
            assert!(
                matches!(parse(with(bad).as_bytes()).err(), Some(Invalid::Body(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn decode_gives_the_bytes() {
        assert_eq!(decode("QUJD"), Ok(b"ABC".to_vec()));
        assert_eq!(decode("QR=="), Ok(b"A".to_vec()));
    }

    fn body(value: &str) -> String {
        format!(
            r#"{{"inputs":{{"binaryPayload":{{"value":"{value}","contentType":"text/plain"}}}}}}"#
        )
    }

    #[test]
    fn strict_base64_follows_the_reference_pattern() {
        for ok in ["", "QUJD", "QUI=", "QQ==", "ab+/", "QR=="] {
            assert!(is_strict_base64(ok), "{ok:?} should pass");
        }
        for bad in [
            "QUJ",
            "Q===",
            "====",
            "QU=D",
            "QUJD\n",
            "QU-_",
            "QUJD QUJD",
            "é123",
        ] {
            assert!(!is_strict_base64(bad), "{bad:?} should fail");
        }
    }

    #[test]
    fn digest_matches_a_plain_decode_across_block_boundaries() {
        for len in [0, 1, 2, 3, 3071, 3072, 3073, 10_240] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let encoded = BASE64_STANDARD.encode(&data);
            let d = digest(&encoded, true).expect("valid base64");
            assert_eq!(d.size, len as u64);
            assert_eq!(d.sha256, Some(hex::encode(Sha256::digest(&data))));
            assert_eq!(
                digest(&encoded, false),
                Ok(Digest {
                    size: len as u64,
                    sha256: None
                })
            );
        }
    }

    #[test]
    fn trailing_bits_are_ignored_like_node() {
        assert_eq!(digest("QR==", true).map(|d| d.size), Ok(1));
        assert_eq!(digest("QR==", true), digest("QQ==", true));
    }

    #[test]
    fn value_is_borrowed_unless_escaped() {
        let plain = body("QUJD");
        let p = parse(plain.as_bytes()).expect("valid");
        assert!(matches!(p.value, Cow::Borrowed("QUJD")));
        assert_eq!(p.metadata, Value::Null);
        let escaped = body(r"a\/b+");
        assert!(
            matches!(parse(escaped.as_bytes()).map(|p| p.value), Ok(Cow::Owned(v)) if v == "a/b+")
        );
    }

    #[test]
    fn refusals_split_between_json_and_payload() {
        assert_eq!(parse(b"{").err(), Some(Invalid::Json));
        assert_eq!(parse(b"").err(), Some(Invalid::Json));
        for not_a_payload in [
            "null",
            "[]",
            r#"{"inputs":5}"#,
            r#"{"inputs":{"binaryPayload":"QUJD"}}"#,
            r#"{"inputs":{"binaryPayload":{"value":"QUJD"}}}"#,
            r#"{"inputs":{"binaryPayload":{"value":7,"contentType":"a"}}}"#,
            &body("QUJ"),
        ] {
            assert_eq!(
                parse(not_a_payload.as_bytes()).err(),
                Some(Invalid::Payload),
                "{not_a_payload}"
            );
        }
    }

    #[test]
    fn repeated_keys_and_invalid_utf8_are_taken_as_javascript_does() {
        let repeated = r#"{"inputs":{"binaryPayload":{"value":5,"value":"QUJD","contentType":"a"},
            "metadata":{"k":1},"metadata":{"k":2}}}"#;
        let p = parse(repeated.as_bytes()).expect("last key wins");
        assert_eq!(p.value, "QUJD");
        assert_eq!(p.metadata, serde_json::json!({"k": 2}));
        let mut latin =
            br#"{"inputs":{"binaryPayload":{"value":"QUJD","contentType":"a"},"metadata":""#
                .to_vec();
        latin.extend_from_slice(b"\xff\"}}");
        let p = parse(&latin).expect("lossy UTF-8");
        assert_eq!(p.metadata, Value::String("\u{fffd}".into()));
    }
}
