//! The execute request's JSON body, in the shape the API profile names: nested
//! (`{"inputs":{"<payload>":{"value":…,"<type>":…},"metadata":{…}}}`, seed and
//! cxone) or flat (`{"<payload>":…,"<type>":…, …metadata}`, Genesys), each with
//! the chunk fields when a file goes in chunks.
//!
//! A body is a fixed prefix, the base64 text, and a suffix: the base64 is written
//! straight into its place, and the size of a body is known before it is built, which
//! is what chunk planning needs.

use std::ops::Range;

use serde_json::{Map, Value};

use crate::job::{ErrorKind, Failure};

/// How the body is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"inputs":{"<payload>":{"value":…,"<type>":…},"metadata":{…},"chunk":{…}}}`.
    Nested,
    /// One flat object: payload, type, chunk fields and every metadata key.
    Flat,
}

/// The body's shape and the names of its two payload fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFormat {
    pub shape: Shape,
    /// `PAYLOAD_FIELD`: the base64 text.
    pub payload_field: String,
    /// `CONTENT_TYPE_FIELD`: the file's type.
    pub content_type_field: String,
}

/// The chunk fields, by their contract names (flat bodies prefix them with `chunk`).
pub const CHUNK_FIELDS: [&str; 8] = [
    "uploadId",
    "index",
    "count",
    "offset",
    "size",
    "totalSize",
    "sha256",
    "fileSha256",
];

/// Keys a flat Genesys body may not take from metadata: the action's own inputs
/// would be overwritten, or Genesys reserves them.
const RESERVED_FLAT_KEYS: [&str; 3] = ["orgId", "integrationId", "rawRequest"];

/// One chunk of a file, as its body describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkFields<'a> {
    pub upload_id: &'a str,
    pub index: u64,
    pub count: u64,
    pub offset: u64,
    pub size: u64,
    pub total_size: u64,
    pub sha256: &'a str,
    pub file_sha256: &'a str,
}

impl Default for BodyFormat {
    /// The contract's v1 body.
    fn default() -> Self {
        Self {
            shape: Shape::Nested,
            payload_field: "binaryPayload".into(),
            content_type_field: "contentType".into(),
        }
    }
}

impl BodyFormat {
    /// Refuses metadata this shape cannot carry: a flat body takes only scalar
    /// values, and no key that is a payload, type, chunk or reserved field.
    pub fn check_metadata(&self, metadata: Option<&Map<String, Value>>) -> Result<(), Failure> {
        let (Shape::Flat, Some(metadata)) = (self.shape, metadata) else {
            return Ok(());
        };
        for (key, value) in metadata {
            if self.is_own_field(key) {
                return Err(Failure::permanent(
                    ErrorKind::InvalidJob,
                    format!("metadata key {key:?} is a field of the request body itself"),
                ));
            }
            if matches!(value, Value::Array(_) | Value::Object(_)) {
                return Err(Failure::permanent(
                    ErrorKind::InvalidJob,
                    format!(
                        "metadata {key:?} is an array or an object; a flat (genesys) body takes only strings, numbers, booleans and null"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn is_own_field(&self, key: &str) -> bool {
        key == self.payload_field
            || key == self.content_type_field
            || RESERVED_FLAT_KEYS.contains(&key)
            || CHUNK_FIELDS.iter().any(|f| flat_chunk_name(f) == key)
    }

    /// Builds the body for `bytes` in one allocation of its exact size, and says
    /// where the base64 text sits.
    pub fn build(
        &self,
        bytes: &[u8],
        content_type: &str,
        metadata: Option<&Map<String, Value>>,
        chunk: Option<&ChunkFields<'_>>,
    ) -> (Vec<u8>, Range<usize>) {
        let (prefix, suffix) = self.frame(content_type, metadata, chunk);
        let encoded_len = base64_simd::STANDARD.encoded_length(bytes.len());
        let mut body = Vec::with_capacity(prefix.len() + encoded_len + suffix.len());
        body.extend_from_slice(&prefix);
        // SIMD base64 appended in place: into the capacity reserved above, with no
        // zero-fill and no intermediate string.
        base64_simd::STANDARD.encode_append(bytes, &mut body);
        debug_assert_eq!(body.len(), prefix.len() + encoded_len);
        body.extend_from_slice(&suffix);
        (body, prefix.len()..prefix.len() + encoded_len)
    }

    /// The body's size without its base64 text.
    pub fn overhead(
        &self,
        content_type: &str,
        metadata: Option<&Map<String, Value>>,
        chunk: Option<&ChunkFields<'_>>,
    ) -> usize {
        let (prefix, suffix) = self.frame(content_type, metadata, chunk);
        prefix.len() + suffix.len()
    }

    /// The text before and after the base64.
    fn frame(
        &self,
        content_type: &str,
        metadata: Option<&Map<String, Value>>,
        chunk: Option<&ChunkFields<'_>>,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut prefix = Vec::with_capacity(64);
        let mut suffix = Vec::with_capacity(128);
        match self.shape {
            Shape::Nested => {
                prefix.extend_from_slice(br#"{"inputs":{"#);
                json(&mut prefix, &self.payload_field);
                prefix.extend_from_slice(br#":{"value":""#);
                suffix.extend_from_slice(b"\",");
                json(&mut suffix, &self.content_type_field);
                suffix.push(b':');
                json(&mut suffix, content_type);
                suffix.extend_from_slice(br#"},"metadata":"#);
                match metadata {
                    Some(m) => json(&mut suffix, m),
                    None => suffix.extend_from_slice(b"{}"),
                }
                if let Some(chunk) = chunk {
                    suffix.extend_from_slice(br#","chunk":{"#);
                    chunk_fields(&mut suffix, chunk, str::to_owned);
                    suffix.push(b'}');
                }
                suffix.extend_from_slice(b"}}");
            }
            Shape::Flat => {
                prefix.push(b'{');
                json(&mut prefix, &self.payload_field);
                prefix.extend_from_slice(b":\"");
                suffix.extend_from_slice(b"\",");
                json(&mut suffix, &self.content_type_field);
                suffix.push(b':');
                json(&mut suffix, content_type);
                if let Some(chunk) = chunk {
                    suffix.push(b',');
                    chunk_fields(&mut suffix, chunk, flat_chunk_name);
                }
                for (key, value) in metadata.into_iter().flatten() {
                    suffix.push(b',');
                    json(&mut suffix, key);
                    suffix.push(b':');
                    json(&mut suffix, value);
                }
                suffix.push(b'}');
            }
        }
        (prefix, suffix)
    }
}

/// `uploadId` -> `chunkUploadId`.
fn flat_chunk_name(field: &str) -> String {
    let mut name = String::with_capacity(5 + field.len());
    name.push_str("chunk");
    let mut chars = field.chars();
    if let Some(first) = chars.next() {
        name.extend(first.to_uppercase());
    }
    name.extend(chars);
    name
}

fn chunk_fields(out: &mut Vec<u8>, c: &ChunkFields<'_>, name: impl Fn(&str) -> String) {
    let values = [
        Value::from(c.upload_id),
        Value::from(c.index),
        Value::from(c.count),
        Value::from(c.offset),
        Value::from(c.size),
        Value::from(c.total_size),
        Value::from(c.sha256),
        Value::from(c.file_sha256),
    ];
    for (i, (field, value)) in CHUNK_FIELDS.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json(out, &name(field));
        out.push(b':');
        json(out, &value);
    }
}

/// Serializing strings, maps and values into a Vec cannot fail.
fn json(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("json into a Vec");
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    fn flat() -> BodyFormat {
        BodyFormat {
            shape: Shape::Flat,
            ..BodyFormat::default()
        }
    }

    fn meta(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const CHUNK: ChunkFields<'static> = ChunkFields {
        upload_id: "job-1",
        index: 2,
        count: 5,
        offset: 600,
        size: 300,
        total_size: 1400,
        sha256: "aa",
        file_sha256: "bb",
    };

    #[test]
    fn the_nested_body_is_v1s_with_the_default_names() {
        let (body, range) = BodyFormat::default().build(b"ab", "application/pdf", None, None);
        assert_eq!(
            body,
            br#"{"inputs":{"binaryPayload":{"value":"YWI=","contentType":"application/pdf"},"metadata":{}}}"#
        );
        assert_eq!(&body[range], b"YWI=");
    }

    #[test]
    fn field_names_and_chunks_in_both_shapes() {
        let named = BodyFormat {
            shape: Shape::Nested,
            payload_field: "doc".into(),
            content_type_field: "mime".into(),
        };
        let m = meta(serde_json::json!({"a": 1}));
        let (body, _) = named.build(b"abc", "image/png", Some(&m), Some(&CHUNK));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["inputs"]["doc"]["value"], "YWJj");
        assert_eq!(v["inputs"]["doc"]["mime"], "image/png");
        assert_eq!(v["inputs"]["metadata"]["a"], 1);
        assert_eq!(
            v["inputs"]["chunk"],
            serde_json::json!({"uploadId": "job-1", "index": 2, "count": 5, "offset": 600,
                               "size": 300, "totalSize": 1400, "sha256": "aa", "fileSha256": "bb"})
        );
        let m = meta(serde_json::json!({"source": "billing", "n": 2.5, "ok": true, "none": null}));
        let (body, range) = flat().build(b"abc", "image/png", Some(&m), Some(&CHUNK));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"binaryPayload": "YWJj", "contentType": "image/png",
                "chunkUploadId": "job-1", "chunkIndex": 2, "chunkCount": 5, "chunkOffset": 600,
                "chunkSize": 300, "chunkTotalSize": 1400, "chunkSha256": "aa", "chunkFileSha256": "bb",
                "source": "billing", "n": 2.5, "ok": true, "none": null})
        );
        assert_eq!(&body[range], STANDARD.encode(b"abc").as_bytes());
    }

    #[test]
    fn the_overhead_is_the_body_without_its_base64() {
        let m = meta(serde_json::json!({"k": "é\"quoted\""}));
        for format in [BodyFormat::default(), flat()] {
            for chunk in [None, Some(&CHUNK)] {
                let data = vec![7u8; 1000];
                let (body, range) = format.build(&data, "application/pdf", Some(&m), chunk);
                assert_eq!(
                    format.overhead("application/pdf", Some(&m), chunk),
                    body.len() - range.len()
                );
                assert_eq!(
                    body.capacity(),
                    body.len(),
                    "one allocation, its final size"
                );
            }
        }
    }

    #[test]
    fn flat_bodies_refuse_what_they_cannot_carry() {
        let refused = |v: Value| {
            flat()
                .check_metadata(Some(&meta(v)))
                .unwrap_err()
                .to_string()
        };
        for key in [
            "binaryPayload",
            "contentType",
            "chunkIndex",
            "chunkFileSha256",
            "orgId",
            "integrationId",
            "rawRequest",
        ] {
            let e = refused(serde_json::json!({ key: "x" }));
            assert!(e.starts_with("invalid_job") && e.contains(key), "{e}");
        }
        assert!(refused(serde_json::json!({"list": [1]})).contains("array or an object"));
        assert!(refused(serde_json::json!({"obj": {"a": 1}})).contains("array or an object"));
        assert!(
            flat()
                .check_metadata(Some(&meta(
                    serde_json::json!({"s": "x", "n": 1, "b": false, "z": null})
                )))
                .is_ok()
        );
        // The nested shape carries any metadata object.
        let any = meta(serde_json::json!({"list": [1], "orgId": "x"}));
        assert!(BodyFormat::default().check_metadata(Some(&any)).is_ok());
    }
}
