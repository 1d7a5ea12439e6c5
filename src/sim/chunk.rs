//! The chunk fields of an execute body (contract v2 "Chunking"): read with their types checked,
//! then checked against the chunk's own bytes and key. Checks against earlier chunks of the same
//! upload are `uploads.rs`'s.

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// The eight fields as they are named inside `inputs.chunk` (seed, cxone). Spelled
/// here from the contract, not taken from `encode::body::CHUNK_FIELDS`: the simulator
/// checks the worker, so a misspelt name in the worker must fail against it.
pub(crate) const NESTED_NAMES: [&str; 8] = [
    "uploadId",
    "index",
    "count",
    "offset",
    "size",
    "totalSize",
    "sha256",
    "fileSha256",
];

/// The same fields as flat keys of a genesys body: `chunk` + the capitalised name.
pub(crate) const FLAT_NAMES: [&str; 8] = [
    "chunkUploadId",
    "chunkIndex",
    "chunkCount",
    "chunkOffset",
    "chunkSize",
    "chunkTotalSize",
    "chunkSha256",
    "chunkFileSha256",
];

/// One chunk's description, every field present and of its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkFields {
    /// The job's idempotency key.
    pub(crate) upload_id: String,
    pub(crate) index: u64,
    pub(crate) count: u64,
    /// Of the chunk's first byte in the file.
    pub(crate) offset: u64,
    /// Bytes in this chunk.
    pub(crate) size: u64,
    pub(crate) total_size: u64,
    /// Lowercase hex SHA-256 of this chunk's bytes.
    pub(crate) sha256: String,
    /// Lowercase hex SHA-256 of the whole file.
    pub(crate) file_sha256: String,
}

impl ChunkFields {
    /// Reads the fields named `names` (in `NESTED_NAMES` order) through `take`, naming the
    /// first one that is missing or of the wrong type.
    pub(crate) fn read(
        names: &[&str; 8],
        mut take: impl FnMut(&str) -> Option<Value>,
    ) -> Result<Self, String> {
        let mut field = |i: usize| take(names[i]).ok_or_else(|| format!("missing {}", names[i]));
        let whole = |i: usize, value: Value| {
            value
                .as_u64()
                .ok_or_else(|| format!("{} must be a whole number of at least 0", names[i]))
        };
        let hex = |i: usize, value: Value| match value {
            Value::String(s) if is_sha256_hex(&s) => Ok(s),
            _ => Err(format!(
                "{} must be a SHA-256 as 64 lowercase hex digits",
                names[i]
            )),
        };
        let upload_id = match field(0)? {
            Value::String(s) if !s.is_empty() => s,
            _ => return Err(format!("{} must be a non-empty string", names[0])),
        };
        Ok(Self {
            upload_id,
            index: whole(1, field(1)?)?,
            count: whole(2, field(2)?)?,
            offset: whole(3, field(3)?)?,
            size: whole(4, field(4)?)?,
            total_size: whole(5, field(5)?)?,
            sha256: hex(6, field(6)?)?,
            file_sha256: hex(7, field(7)?)?,
        })
    }

    /// `inputs.chunk` of a nested body: an object with exactly the eight fields.
    pub(crate) fn from_nested(chunk: Value) -> Result<Self, String> {
        let Value::Object(mut fields) = chunk else {
            return Err("inputs.chunk must be an object".to_owned());
        };
        let chunk = Self::read(&NESTED_NAMES, |name| fields.remove(name))
            .map_err(|e| format!("inputs.chunk: {e}"))?;
        match fields.keys().next() {
            Some(unknown) => Err(format!("inputs.chunk: unknown field {unknown}")),
            None => Ok(chunk),
        }
    }

    /// The flat `chunk*` keys a genesys body carried; `None` when it carried none.
    pub(crate) fn from_flat(mut fields: Map<String, Value>) -> Result<Option<Self>, String> {
        if fields.is_empty() {
            return Ok(None);
        }
        Self::read(&FLAT_NAMES, |name| fields.remove(name)).map(Some)
    }

    pub(crate) fn is_last(&self) -> bool {
        self.index.checked_add(1) == Some(self.count)
    }

    /// Byte just past the chunk; `None` when the fields overflow.
    pub(crate) fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.size)
    }

    /// What can be checked from this chunk alone: its place, its key, and its bytes.
    /// `encoded` is the base64 as sent, `decoded` its bytes.
    pub(crate) fn check(&self, key: &str, encoded: &str, decoded: &[u8]) -> Result<(), String> {
        let i = self.index;
        if i >= self.count {
            return Err(format!("chunk index {i} is not below count {}", self.count));
        }
        let expected_key = format!("{}#{i}", self.upload_id);
        if key != expected_key {
            return Err(format!(
                "chunk {i} of upload {:?} must have Idempotency-Key {expected_key:?}",
                self.upload_id
            ));
        }
        if self.size != decoded.len() as u64 {
            return Err(format!(
                "chunk {i}: size {} but the payload decodes to {} bytes",
                self.size,
                decoded.len()
            ));
        }
        if i == 0 && self.offset != 0 {
            return Err(format!("chunk 0 must have offset 0, not {}", self.offset));
        }
        self.check_bounds()?;
        // With `size` equal to the decoded length, a multiple of 3 is the same as base64
        // without padding; both are tested so that the message holds whichever was sent.
        if !self.is_last() && (!self.size.is_multiple_of(3) || encoded.ends_with('=')) {
            return Err(format!(
                "chunk {i} is not the last one, so it must hold a multiple of 3 bytes \
                 (base64 without padding), not {}",
                self.size
            ));
        }
        if hex::encode(Sha256::digest(decoded)) != self.sha256 {
            return Err(format!("chunk {i}: sha256 is not the SHA-256 of its bytes"));
        }
        Ok(())
    }

    /// The chunk lies inside the file, and the last one ends where the file does.
    fn check_bounds(&self) -> Result<(), String> {
        let i = self.index;
        let end = self
            .end()
            .filter(|end| *end <= self.total_size)
            .ok_or_else(|| {
                format!(
                    "chunk {i}: offset {} + size {} passes totalSize {}",
                    self.offset, self.size, self.total_size
                )
            })?;
        if self.is_last() && end != self.total_size {
            return Err(format!(
                "chunk {i} is the last one but ends at {end}, not at totalSize {}",
                self.total_size
            ));
        }
        Ok(())
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn fields(index: u64, count: u64, offset: u64, bytes: &[u8], total: u64) -> ChunkFields {
        ChunkFields {
            upload_id: "job".into(),
            index,
            count,
            offset,
            size: bytes.len() as u64,
            total_size: total,
            sha256: sha(bytes),
            file_sha256: sha(b"whatever"),
        }
    }

    #[test]
    fn nested_fields_are_read_with_their_types() {
        let chunk = json!({"uploadId": "job", "index": 1, "count": 2, "offset": 3, "size": 2,
            "totalSize": 5, "sha256": sha(b"de"), "fileSha256": sha(b"abcde")});
        let read = ChunkFields::from_nested(chunk.clone()).expect("valid");
        assert_eq!(
            (read.index, read.count, read.offset, read.size),
            (1, 2, 3, 2)
        );
        let mut extra = chunk.clone();
        extra["more"] = json!(1);
        assert_eq!(
            ChunkFields::from_nested(extra),
            Err("inputs.chunk: unknown field more".into())
        );
        for (field, bad) in [
            ("index", json!(-1)),
            ("count", json!(1.5)),
            ("size", json!("2")),
            ("uploadId", json!("")),
            ("sha256", json!(sha(b"de").to_uppercase())),
        ] {
            let mut wrong = chunk.clone();
            wrong[field] = bad;
            let err = ChunkFields::from_nested(wrong).expect_err(field);
            assert!(err.contains(field), "{err}");
        }
        let mut missing = chunk;
        missing.as_object_mut().map(|m| m.remove("offset"));
        assert_eq!(
            ChunkFields::from_nested(missing),
            Err("inputs.chunk: missing offset".into())
        );
    }

    #[test]
    fn flat_fields_are_all_or_nothing() {
        assert_eq!(ChunkFields::from_flat(Map::new()), Ok(None));
        let mut some = Map::new();
        some.insert("chunkIndex".into(), json!(0));
        assert_eq!(
            ChunkFields::from_flat(some),
            Err("missing chunkUploadId".into())
        );
    }

    #[test]
    fn extreme_numbers_are_refused_without_overflow() {
        let mut huge = fields(u64::MAX - 1, u64::MAX, u64::MAX, b"abc", u64::MAX);
        let key = format!("job#{}", u64::MAX - 1);
        let err = huge
            .check(&key, "YWJj", b"abc")
            .expect_err("offset + size overflows");
        assert!(err.contains("passes totalSize"), "{err}");
        huge.index = u64::MAX;
        let key = format!("job#{}", u64::MAX);
        assert!(huge.check(&key, "YWJj", b"abc").is_err());
        assert!(!huge.is_last());
    }

    #[test]
    fn a_chunk_is_checked_against_its_own_bytes_and_key() {
        let first = fields(0, 2, 0, b"abc", 5);
        assert_eq!(first.check("job#0", "YWJj", b"abc"), Ok(()));
        let refusals = [
            (
                fields(0, 2, 0, b"abc", 5),
                "job#1",
                "YWJj",
                &b"abc"[..],
                "Idempotency-Key",
            ),
            (
                fields(2, 2, 0, b"abc", 5),
                "job#2",
                "YWJj",
                b"abc",
                "not below count",
            ),
            (
                fields(0, 2, 1, b"abc", 5),
                "job#0",
                "YWJj",
                b"abc",
                "offset 0",
            ),
            (
                fields(0, 2, 0, b"ab", 5),
                "job#0",
                "YWI=",
                b"ab",
                "multiple of 3",
            ),
            (fields(1, 2, 3, b"d", 5), "job#1", "ZA==", b"d", "ends at 4"),
            (
                fields(1, 2, 3, b"de", 4),
                "job#1",
                "ZGU=",
                b"de",
                "passes totalSize",
            ),
        ];
        for (chunk, key, encoded, decoded, expected) in refusals {
            let err = chunk.check(key, encoded, decoded).expect_err(expected);
            assert!(err.contains(expected), "{err} lacks {expected}");
        }
        let mut wrong_size = fields(0, 2, 0, b"abc", 5);
        wrong_size.size = 6;
        assert!(wrong_size.check("job#0", "YWJj", b"abc").is_err());
        let mut wrong_hash = first;
        wrong_hash.sha256 = sha(b"abd");
        let err = wrong_hash.check("job#0", "YWJj", b"abc").expect_err("hash");
        assert!(err.contains("sha256"), "{err}");
    }
}
