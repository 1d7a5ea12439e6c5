//! Whether a file goes in one request or in chunks (`MAX_REQUEST_BYTES`,
//! `CHUNKING`), and how big the chunks are: every chunk but the last a multiple of
//! 3 bytes (so only the last one's base64 may end in padding), every body within the
//! cap.

use crate::job::{ErrorKind, Failure};
use crate::state::MAX_CHUNKS;

/// How a file of known size is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// One request carries it all.
    Whole,
    Chunks(Plan),
}

/// Chunks of `chunk_size` bytes, the last one shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub total: u64,
    pub chunk_size: u64,
    pub count: u64,
}

impl Plan {
    /// Offset and size of chunk `index`.
    pub fn range(&self, index: u64) -> (u64, u64) {
        let offset = index * self.chunk_size;
        (offset, self.chunk_size.min(self.total - offset))
    }
}

/// The request-size rules a file meets.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `MAX_REQUEST_BYTES`; 0 = no limit.
    pub max_request_bytes: u64,
    /// `CHUNKING=on`.
    pub chunking: bool,
}

/// Base64 length of `n` bytes, padded.
pub fn base64_len(n: u64) -> u64 {
    n.div_ceil(3) * 4
}

/// How a file of `total` bytes is sent. `whole_overhead` is the size of its one
/// body without the base64; `chunk_overhead` that of the widest chunk body (every
/// number as wide as `total`, which none exceeds).
pub fn fit(
    total: u64,
    limits: Limits,
    whole_overhead: u64,
    chunk_overhead: u64,
) -> Result<Fit, Failure> {
    let cap = limits.max_request_bytes;
    let whole = whole_overhead + base64_len(total);
    if cap == 0 || whole <= cap {
        return Ok(Fit::Whole);
    }
    let too_large = |why: String| Failure::permanent(ErrorKind::TooLarge, why);
    if !limits.chunking {
        return Err(too_large(format!(
            "the request would have {whole} bytes, more than MAX_REQUEST_BYTES ({cap}), and CHUNKING is off"
        )));
    }
    let room = cap.saturating_sub(chunk_overhead);
    let chunk_size = room / 4 * 3;
    if chunk_size == 0 {
        return Err(too_large(format!(
            "MAX_REQUEST_BYTES ({cap}) leaves no room for file bytes beside the {chunk_overhead} bytes of a chunk's other fields"
        )));
    }
    let count = total.div_ceil(chunk_size);
    if count > MAX_CHUNKS as u64 {
        return Err(too_large(format!(
            "the file would need {count} chunks of {chunk_size} bytes under MAX_REQUEST_BYTES ({cap}), more than the {MAX_CHUNKS} a job may have"
        )));
    }
    Ok(Fit::Chunks(Plan {
        total,
        chunk_size,
        count,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::body::{BodyFormat, ChunkFields, Shape};
    use proptest::prelude::*;

    fn limits(cap: u64) -> Limits {
        Limits {
            max_request_bytes: cap,
            chunking: true,
        }
    }

    #[test]
    fn a_body_exactly_at_the_cap_is_whole_one_byte_over_is_chunked() {
        // 300 bytes: 400 of base64, 100 of other fields.
        assert_eq!(fit(300, limits(500), 100, 150), Ok(Fit::Whole));
        let Ok(Fit::Chunks(plan)) = fit(300, limits(499), 100, 150) else {
            panic!("one byte over the cap must be chunked");
        };
        assert_eq!(
            (plan.chunk_size, plan.count),
            (261, 2),
            "(499 - 150) / 4 * 3"
        );
        assert_eq!(
            fit(300, limits(0), 100, 150),
            Ok(Fit::Whole),
            "0 = no limit"
        );
    }

    #[test]
    fn what_cannot_be_chunked_is_too_large() {
        let kind = |r: Result<Fit, Failure>| match r {
            Err(Failure::Permanent { kind, message }) => (kind, message),
            other => panic!("{other:?}"),
        };
        let off = Limits {
            max_request_bytes: 499,
            chunking: false,
        };
        let (k, m) = kind(fit(300, off, 100, 150));
        assert_eq!(k, ErrorKind::TooLarge);
        assert!(m.contains("CHUNKING is off"), "{m}");
        let (_, m) = kind(fit(300, limits(152), 100, 150));
        assert!(m.contains("no room"), "{m}");
        let (_, m) = kind(fit(1 << 30, limits(1000), 100, 150));
        assert!(m.contains("chunks"), "{m}");
    }

    proptest! {
        #[test]
        fn chunks_cover_the_file_once_within_the_cap(
            total in 1u64..5_000_000,
            cap in 400u64..600_000,
            flat in any::<bool>(),
        ) {
            let format = BodyFormat {
                shape: if flat { Shape::Flat } else { Shape::Nested },
                ..BodyFormat::default()
            };
            let sha = "0".repeat(64);
            let chunk = |index, count, offset, size| ChunkFields {
                upload_id: "job-1",
                index,
                count,
                offset,
                size,
                total_size: total,
                sha256: &sha,
                file_sha256: &sha,
            };
            let widest = chunk(total, total, total, total);
            let whole = format.overhead("application/pdf", None, None) as u64;
            let widest = format.overhead("application/pdf", None, Some(&widest)) as u64;
            let Ok(Fit::Chunks(plan)) = fit(total, limits(cap), whole, widest) else {
                // Whole (fits) or refused as too large: nothing more to check.
                return Ok(());
            };
            let mut next = 0;
            for i in 0..plan.count {
                let (offset, size) = plan.range(i);
                prop_assert_eq!(offset, next, "no gap, no overlap");
                prop_assert!(size > 0);
                let last = i + 1 == plan.count;
                prop_assert!(last || size % 3 == 0, "only the last chunk may pad");
                let overhead = format.overhead("application/pdf", None, Some(&chunk(i, plan.count, offset, size)));
                prop_assert!(overhead as u64 + base64_len(size) <= cap, "chunk {} over the cap", i);
                next = offset + size;
            }
            prop_assert_eq!(next, total, "the chunks cover the file");
        }
    }
}
