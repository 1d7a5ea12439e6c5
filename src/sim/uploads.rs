//! Reassembly of chunked uploads, per `uploadId`: each chunk is checked against the chunks of
//! its upload that came before, the file is hashed incrementally as chunks arrive in index
//! order, and only chunks that come early are held in memory until their turn.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::ser::SerializeMap;
use sha2::{Digest as _, Sha256};

use super::chunk::ChunkFields;
use super::state::lock;

/// Whether a chunk that passed every check was new or an index already received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    New,
    Repeat,
}

/// What is kept of a received index to check later chunks (and repeats) against.
#[derive(Debug)]
struct Seen {
    offset: u64,
    size: u64,
    sha256: String,
}

/// One upload. Its `count`, `total_size` and `file_sha256` are those of its first chunk; every
/// later chunk must agree.
struct Upload {
    count: u64,
    total_size: u64,
    file_sha256: String,
    seen: BTreeMap<u64, Seen>,
    /// Every chunk index in the order it arrived, repeats included.
    order: Vec<u64>,
    repeats: u64,
    /// SHA-256 of the file's bytes up to chunk `next_index` (exclusive).
    hasher: Sha256,
    next_index: u64,
    hashed_bytes: u64,
    /// Chunks that came before their turn, by index; emptied as the gap before them fills.
    early: BTreeMap<u64, Vec<u8>>,
    /// Once every index arrived: (SHA-256 equals `fileSha256`, length equals `totalSize`).
    verdict: Option<(bool, bool)>,
}

impl Upload {
    fn new(first: &ChunkFields) -> Self {
        Self {
            count: first.count,
            total_size: first.total_size,
            file_sha256: first.file_sha256.clone(),
            seen: BTreeMap::new(),
            order: Vec::new(),
            repeats: 0,
            hasher: Sha256::new(),
            next_index: 0,
            hashed_bytes: 0,
            early: BTreeMap::new(),
            verdict: None,
        }
    }

    /// Checks `chunk` against this upload without changing anything. `chunk` passed
    /// `ChunkFields::check`: its index is below its count, and it ends inside the file.
    fn check(&self, chunk: &ChunkFields) -> Result<Arrival, String> {
        let i = chunk.index;
        if (chunk.count, chunk.total_size) != (self.count, self.total_size)
            || chunk.file_sha256 != self.file_sha256
        {
            return Err(format!(
                "chunk {i} disagrees with earlier chunks of upload {:?} on count, totalSize or \
                 fileSha256 (they said {}, {}, {})",
                chunk.upload_id, self.count, self.total_size, self.file_sha256
            ));
        }
        if let Some(first) = self.seen.get(&i) {
            let same = (first.offset, first.size) == (chunk.offset, chunk.size)
                && first.sha256 == chunk.sha256;
            return if same {
                Ok(Arrival::Repeat)
            } else {
                Err(format!(
                    "chunk {i} was received before with other offset, size or bytes"
                ))
            };
        }
        let end = chunk.end().unwrap_or(u64::MAX);
        if let Some((&before, seen)) = self.seen.range(..i).next_back() {
            let seen_end = seen.offset + seen.size;
            if chunk.offset < seen_end || (before + 1 == i && chunk.offset != seen_end) {
                return Err(format!(
                    "chunk {i} has offset {} but chunk {before} ends at {seen_end}",
                    chunk.offset
                ));
            }
        }
        // `index < count` was checked, so `i + 1` cannot overflow.
        if let Some((&after, seen)) = self.seen.range(i + 1..).next()
            && (end > seen.offset || (after == i + 1 && end != seen.offset))
        {
            return Err(format!(
                "chunk {i} ends at {end} but chunk {after} starts at {}",
                seen.offset
            ));
        }
        Ok(Arrival::New)
    }

    /// Takes a new chunk's bytes: hashed now if it is next in order, else held until it is.
    fn take(&mut self, chunk: &ChunkFields, bytes: Vec<u8>) {
        self.seen.insert(
            chunk.index,
            Seen {
                offset: chunk.offset,
                size: chunk.size,
                sha256: chunk.sha256.clone(),
            },
        );
        self.early.insert(chunk.index, bytes);
        while let Some(bytes) = self.early.remove(&self.next_index) {
            self.hasher.update(&bytes);
            self.hashed_bytes += bytes.len() as u64;
            self.next_index += 1;
        }
        if self.next_index == self.count {
            let sha256 = hex::encode(self.hasher.finalize_reset());
            self.verdict = Some((
                sha256 == self.file_sha256,
                self.hashed_bytes == self.total_size,
            ));
        }
    }
}

/// Every upload seen since start or the last `/__reset`.
#[derive(Default)]
pub(crate) struct Uploads {
    /// Held only to find or add an upload; each upload has its own lock, held while its
    /// chunk is hashed, so that uploads do not wait for each other.
    by_id: Mutex<HashMap<String, Arc<Mutex<Upload>>>>,
}

impl Uploads {
    /// Records a chunk that passed `ChunkFields::check` (which this relies on: index below
    /// count, inside the file), or says why it does not fit its upload; then nothing is
    /// recorded.
    pub(crate) fn accept(&self, chunk: &ChunkFields, bytes: Vec<u8>) -> Result<Arrival, String> {
        let upload = {
            let mut by_id = lock(&self.by_id);
            let entry = by_id.entry(chunk.upload_id.clone());
            Arc::clone(entry.or_insert_with(|| Arc::new(Mutex::new(Upload::new(chunk)))))
        };
        let mut upload = lock(&upload);
        let arrival = upload.check(chunk)?;
        upload.order.push(chunk.index);
        match arrival {
            Arrival::Repeat => upload.repeats += 1,
            Arrival::New => upload.take(chunk, bytes),
        }
        Ok(arrival)
    }

    pub(crate) fn clear(&self) {
        let old = std::mem::take(&mut *lock(&self.by_id));
        drop(old);
    }
}

impl Serialize for Uploads {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let by_id = lock(&self.by_id);
        let mut map = s.serialize_map(Some(by_id.len()))?;
        for (id, upload) in by_id.iter() {
            map.serialize_entry(id, &UploadStats(&lock(upload)))?;
        }
        map.end()
    }
}

struct UploadStats<'a>(&'a Upload);

impl Serialize for UploadStats<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let u = self.0;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("received", &u.seen.len())?;
        map.serialize_entry("count", &u.count)?;
        map.serialize_entry("repeats", &u.repeats)?;
        map.serialize_entry("order", &u.order)?;
        map.serialize_entry("total_size", &u.total_size)?;
        map.serialize_entry("bytes_hashed", &u.hashed_bytes)?;
        map.serialize_entry("held_chunks", &u.early.len())?;
        map.serialize_entry("complete", &u.verdict.is_some())?;
        map.serialize_entry("sha256_matches", &u.verdict.map(|v| v.0))?;
        map.serialize_entry("size_matches", &u.verdict.map(|v| v.1))?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid chunk fields for `file` split at `cuts`.
    fn split(file: &[u8], cuts: &[usize]) -> Vec<(ChunkFields, Vec<u8>)> {
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(file.len());
        let count = bounds.len() as u64 - 1;
        bounds
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let bytes = file[w[0]..w[1]].to_vec();
                let fields = ChunkFields {
                    upload_id: "u".into(),
                    index: i as u64,
                    count,
                    offset: w[0] as u64,
                    size: bytes.len() as u64,
                    total_size: file.len() as u64,
                    sha256: hex::encode(Sha256::digest(&bytes)),
                    file_sha256: hex::encode(Sha256::digest(file)),
                };
                (fields, bytes)
            })
            .collect()
    }

    fn stats(uploads: &Uploads) -> serde_json::Value {
        serde_json::to_value(uploads).expect("json")["u"].clone()
    }

    #[test]
    fn out_of_order_chunks_wait_and_the_file_is_verified_once_whole() {
        let file: Vec<u8> = (0..100u8).collect();
        let chunks = split(&file, &[30, 60, 90]);
        let uploads = Uploads::default();
        for i in [2, 0, 3] {
            let (fields, bytes) = &chunks[i];
            assert_eq!(uploads.accept(fields, bytes.clone()), Ok(Arrival::New));
        }
        let partway = stats(&uploads);
        assert_eq!(partway["held_chunks"], 2);
        assert_eq!(partway["bytes_hashed"], 30);
        assert_eq!(partway["complete"], false);
        assert_eq!(partway["sha256_matches"], serde_json::Value::Null);
        let (fields, bytes) = &chunks[1];
        assert_eq!(uploads.accept(fields, bytes.clone()), Ok(Arrival::New));
        assert_eq!(uploads.accept(fields, bytes.clone()), Ok(Arrival::Repeat));
        let done = stats(&uploads);
        assert_eq!(done["order"], serde_json::json!([2, 0, 3, 1, 1]));
        assert_eq!([&done["received"], &done["repeats"]], [4, 1]);
        assert_eq!(
            [
                &done["complete"],
                &done["sha256_matches"],
                &done["size_matches"]
            ],
            [true; 3]
        );
        assert_eq!(done["held_chunks"], 0);
    }

    #[test]
    fn chunks_that_do_not_fit_their_neighbours_are_refused_and_not_recorded() {
        let file = [7u8; 12];
        let chunks = split(&file, &[3, 9]);
        let uploads = Uploads::default();
        assert!(uploads.accept(&chunks[0].0, chunks[0].1.clone()).is_ok());
        let mut gap = chunks[1].0.clone();
        gap.offset = 6;
        let err = uploads.accept(&gap, chunks[1].1.clone()).expect_err("gap");
        assert!(err.contains("chunk 0 ends at 3"), "{err}");
        let mut other_count = chunks[2].0.clone();
        other_count.count = 4;
        assert!(uploads.accept(&other_count, chunks[2].1.clone()).is_err());
        let mut changed = chunks[0].0.clone();
        changed.sha256 = chunks[1].0.sha256.clone();
        assert!(uploads.accept(&changed, chunks[0].1.clone()).is_err());
        let after = stats(&uploads);
        assert_eq!([&after["received"], &after["repeats"]], [1, 0]);
        assert_eq!(after["order"], serde_json::json!([0]));
    }

    #[test]
    fn a_file_that_is_not_the_one_announced_is_reported() {
        let file = [1u8; 6];
        let mut chunks = split(&file, &[3]);
        for (fields, _) in &mut chunks {
            fields.file_sha256 = hex::encode(Sha256::digest(b"another file"));
        }
        let uploads = Uploads::default();
        for (fields, bytes) in chunks {
            assert!(uploads.accept(&fields, bytes).is_ok());
        }
        let done = stats(&uploads);
        assert_eq!(
            [&done["sha256_matches"], &done["size_matches"]],
            [false, true]
        );
    }
}
