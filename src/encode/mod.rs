//! Bytes in, request body out: sniff the real type, check it, base64 it into the
//! contract's JSON body, and hash the raw bytes.
//!
//! The body is the one large allocation of a job: the base64 text is written
//! straight into it (no intermediate `String`), and later stages (the storage
//! record) share it by reference instead of copying it. The encoder is SIMD
//! (`base64-simd`, AVX2/SSE/NEON picked at run time): 5 GiB/s on one core where the
//! scalar `base64` engine gives 1.1, so SHA-256 is the only real cost of a large file.

use std::ops::Range;

use bytes::Bytes;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::job::{ErrorKind, Failure};

pub mod body;
pub mod chunks;

pub use body::{BodyFormat, ChunkFields, Shape};

/// Bytes of no known type.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// A file made ready for the API.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The JSON request body.
    pub body: Bytes,
    /// Where the base64 text sits inside `body`.
    pub value: Range<usize>,
    pub content_type: String,
    pub original_size: u64,
    pub sha256: String,
}

impl Encoded {
    pub fn encoded_size(&self) -> u64 {
        self.value.len() as u64
    }

    /// The base64 text, shared with the body (no copy).
    pub fn base64(&self) -> Bytes {
        self.body.slice(self.value.clone())
    }
}

/// Sniffs, checks and encodes `bytes` into a body of `format`; `declared` is the
/// job's `content_type`.
pub fn encode(
    bytes: &[u8],
    declared: Option<&str>,
    allowed: &[String],
    metadata: Option<&Map<String, Value>>,
    format: &BodyFormat,
) -> Result<Encoded, Failure> {
    format.check_metadata(metadata)?;
    let content_type = resolve_type(bytes, declared, allowed)?;
    let (body, value) = format.build(bytes, &content_type, metadata, None);
    Ok(Encoded {
        body: Bytes::from(body),
        value,
        content_type,
        original_size: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    })
}

/// The type the bytes show by their magic numbers; unknown bytes are octet-stream.
pub fn sniff(bytes: &[u8]) -> &'static str {
    infer::get(bytes).map_or(OCTET_STREAM, |t| t.mime_type())
}

/// `Image/PNG; charset=x` -> `image/png`.
fn normalize(t: &str) -> String {
    t.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The contract's order: a declared type outside the list is `unsupported_type`; a
/// declared type the bytes contradict is `type_mismatch`; with none declared, a
/// sniffed type outside the list is `unsupported_type`.
///
/// Declaring `application/octet-stream` claims "no particular type": bytes of a
/// known type contradict it, so that it cannot smuggle in a type the list refuses.
pub fn resolve_type(
    bytes: &[u8],
    declared: Option<&str>,
    allowed: &[String],
) -> Result<String, Failure> {
    let sniffed = sniff(bytes);
    let is_allowed = |t: &str| allowed.iter().any(|a| a == t);
    match declared.map(normalize) {
        Some(declared) => {
            if !is_allowed(&declared) {
                return Err(Failure::permanent(
                    ErrorKind::UnsupportedType,
                    format!("declared type {declared} is not in ALLOWED_MIME_TYPES"),
                ));
            }
            if declared != sniffed {
                return Err(Failure::permanent(
                    ErrorKind::TypeMismatch,
                    format!("declared type {declared} but the bytes are {sniffed}"),
                ));
            }
            Ok(declared)
        }
        None if is_allowed(sniffed) => Ok(sniffed.to_owned()),
        None => Err(Failure::permanent(
            ErrorKind::UnsupportedType,
            format!("the bytes are {sniffed}, which is not in ALLOWED_MIME_TYPES"),
        )),
    }
}

/// The v1 body (`{"inputs":{"binaryPayload":{"value":…,"contentType":…},"metadata":{…}}}`)
/// in one allocation of its exact final size, and where the base64 sits.
pub fn build_body(
    bytes: &[u8],
    content_type: &str,
    metadata: Option<&Map<String, Value>>,
) -> (Vec<u8>, Range<usize>) {
    BodyFormat::default().build(bytes, content_type, metadata, None)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    // The `base64` crate decodes and re-encodes as an independent oracle of the
    // SIMD encoder used for bodies.
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use proptest::prelude::*;

    fn allowed() -> Vec<String> {
        crate::config::DEFAULT_MIME_TYPES
            .split(',')
            .map(str::to_owned)
            .collect()
    }

    const PDF: &[u8] = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\nrest";
    const PNG: &[u8] =
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00";
    const JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00";
    const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00";
    const EXE: &[u8] = b"MZ\x90\x00\x03\x00\x00\x00";

    fn kind(r: Result<String, Failure>) -> ErrorKind {
        match r {
            Err(Failure::Permanent { kind, .. }) => kind,
            other => panic!("expected a permanent failure, got {other:?}"),
        }
    }

    #[test]
    fn sniffs_each_type() {
        assert_eq!(sniff(PDF), "application/pdf");
        assert_eq!(sniff(PNG), "image/png");
        assert_eq!(sniff(JPEG), "image/jpeg");
        assert_eq!(sniff(GIF), "image/gif");
        assert_eq!(sniff(EXE), "application/vnd.microsoft.portable-executable");
        assert_eq!(sniff(b"just some text\n"), OCTET_STREAM);
        assert_eq!(sniff(b"\x00"), OCTET_STREAM);
    }

    #[test]
    fn declared_types() {
        let a = allowed();
        assert_eq!(
            resolve_type(PDF, Some("application/pdf"), &a).unwrap(),
            "application/pdf"
        );
        assert_eq!(
            resolve_type(PNG, Some("Image/PNG; q=1"), &a).unwrap(),
            "image/png"
        );
        assert_eq!(
            resolve_type(b"text", Some(OCTET_STREAM), &a).unwrap(),
            OCTET_STREAM
        );
        assert_eq!(
            kind(resolve_type(b"text", Some("text/plain"), &a)),
            ErrorKind::UnsupportedType
        );
        // Outside the list wins over a mismatch: the order of checks is the contract's.
        assert_eq!(
            kind(resolve_type(PDF, Some("image/gif"), &a)),
            ErrorKind::UnsupportedType
        );
        assert_eq!(
            kind(resolve_type(EXE, Some("application/pdf"), &a)),
            ErrorKind::TypeMismatch
        );
        assert_eq!(
            kind(resolve_type(PNG, Some("application/pdf"), &a)),
            ErrorKind::TypeMismatch
        );
        assert_eq!(
            kind(resolve_type(GIF, Some(OCTET_STREAM), &a)),
            ErrorKind::TypeMismatch
        );
    }

    #[test]
    fn sniffed_types() {
        let a = allowed();
        assert_eq!(resolve_type(JPEG, None, &a).unwrap(), "image/jpeg");
        assert_eq!(resolve_type(b"plain", None, &a).unwrap(), OCTET_STREAM);
        assert_eq!(
            kind(resolve_type(GIF, None, &a)),
            ErrorKind::UnsupportedType
        );
        assert_eq!(
            kind(resolve_type(EXE, None, &a)),
            ErrorKind::UnsupportedType
        );
        let pdf_only = vec!["application/pdf".to_owned()];
        assert_eq!(
            kind(resolve_type(b"plain", None, &pdf_only)),
            ErrorKind::UnsupportedType
        );
    }

    #[test]
    fn body_matches_the_contract() {
        let mut meta = Map::new();
        meta.insert("note".into(), Value::from("naïve \"q\""));
        let e = encode(PDF, None, &allowed(), Some(&meta), &BodyFormat::default()).unwrap();
        let v: Value = serde_json::from_slice(&e.body).unwrap();
        let bp = &v["inputs"]["binaryPayload"];
        assert_eq!(bp["contentType"], "application/pdf");
        assert_eq!(bp["value"], STANDARD.encode(PDF));
        assert_eq!(v["inputs"]["metadata"]["note"], "naïve \"q\"");
        assert_eq!(&e.body[e.value.clone()], STANDARD.encode(PDF).as_bytes());
        assert_eq!(e.encoded_size(), 4 * (PDF.len() as u64).div_ceil(3));
        assert_eq!(e.original_size, PDF.len() as u64);
        assert_eq!(e.sha256, hex::encode(Sha256::digest(PDF)));
        assert_eq!(e.base64(), STANDARD.encode(PDF).as_bytes());
    }

    #[test]
    fn body_without_metadata_sends_an_empty_object() {
        let (body, _) = build_body(b"ab", OCTET_STREAM, None);
        assert_eq!(
            body,
            br#"{"inputs":{"binaryPayload":{"value":"YWI=","contentType":"application/octet-stream"},"metadata":{}}}"#
        );
    }

    #[test]
    fn body_is_allocated_once_at_its_final_size() {
        let data = vec![0xabu8; 100_000];
        let (body, _) = build_body(&data, OCTET_STREAM, None);
        assert_eq!(body.capacity(), body.len());
    }

    proptest! {
        #[test]
        fn base64_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let (body, range) = build_body(&bytes, OCTET_STREAM, None);
            let v: Value = serde_json::from_slice(&body).unwrap();
            let text = v["inputs"]["binaryPayload"]["value"].as_str().unwrap();
            prop_assert_eq!(text.as_bytes(), &body[range]);
            prop_assert!(!text.contains('\n') && text.len().is_multiple_of(4));
            prop_assert_eq!(STANDARD.decode(text).unwrap(), bytes);
        }
    }
}
