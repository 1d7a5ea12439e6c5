//! Chunked uploads: valid chunks reassemble into the file, checks refuse what breaks the
//! contract's chunking rules, repeats and order are counted, `SIM_FAIL_CHUNK` fails one chunk.

use super::*;

/// The body shape chunk fields travel in.
#[derive(Clone, Copy)]
enum Shape {
    /// `inputs.chunk` (seed, cxone).
    Nested,
    /// `chunk*` keys (genesys).
    Flat,
}

/// A file of `len` bytes that no simple pattern repeats in.
fn file(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The chunk fields of bytes `range` of `file`, split into `count` chunks.
fn fields(
    upload: &str,
    file: &[u8],
    index: usize,
    count: usize,
    range: std::ops::Range<usize>,
) -> Value {
    json!({"uploadId": upload, "index": index, "count": count, "offset": range.start,
        "size": range.len(), "totalSize": file.len(), "sha256": sha(&file[range]),
        "fileSha256": sha(file)})
}

/// An execute body of `bytes` with chunk `fields`, in `shape`.
fn chunk_body(shape: Shape, bytes: &[u8], fields: &Value) -> String {
    let value = BASE64_STANDARD.encode(bytes);
    match shape {
        Shape::Nested => {
            let binary = json!({"value": value, "contentType": "application/octet-stream"});
            json!({"inputs": {"binaryPayload": binary, "metadata": {"job": "x"}, "chunk": fields}})
                .to_string()
        }
        Shape::Flat => {
            let mut body =
                json!({"binaryPayload": value, "contentType": "application/octet-stream"});
            for (name, value) in fields.as_object().expect("fields") {
                let mut flat = String::from("chunk");
                flat.push_str(&name[..1].to_uppercase());
                flat.push_str(&name[1..]);
                body[flat] = value.clone();
            }
            body.to_string()
        }
    }
}

/// The valid chunks of `file` in pieces of `piece` bytes (a multiple of 3): key and body each.
fn split(shape: Shape, upload: &str, file: &[u8], piece: usize) -> Vec<(String, String)> {
    let count = file.len().div_ceil(piece);
    (0..count)
        .map(|i| {
            let range = i * piece..((i + 1) * piece).min(file.len());
            let fields = fields(upload, file, i, count, range.clone());
            (
                format!("{upload}#{i}"),
                chunk_body(shape, &file[range], &fields),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_five_megabyte_file_in_valid_chunks_arrives_whole() {
    let sim = start(SimConfig::default()).await;
    let data = file(5 * 1024 * 1024);
    let chunks = split(Shape::Nested, "big-file", &data, 384_000);
    assert_eq!(chunks.len(), 14);
    for (key, body) in &chunks {
        let (status, answer) = sim.exec("da", key, body.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{key}: {answer}");
    }
    let upload = &sim.uploads().await["big-file"];
    let order: Vec<usize> = (0..14).collect();
    let expected = json!({"received": 14, "count": 14, "repeats": 0, "order": order,
        "total_size": data.len(), "bytes_hashed": data.len(), "held_chunks": 0, "complete": true,
        "sha256_matches": true, "size_matches": true});
    assert_eq!(upload, &expected);
    let stats = sim.stats().await;
    assert_eq!(
        stats["keys"]["big-file#13"]["size"],
        data.len() - 13 * 384_000
    );
    assert_eq!(
        stats["keys"]["big-file#0"]["sha256"],
        sha(&data[..384_000]).as_str()
    );
    assert_eq!(stats["unique_keys"], 14);
}

#[tokio::test]
async fn chunks_out_of_order_wait_for_their_turn_and_repeats_are_counted() {
    let sim = start(SimConfig::default()).await;
    let data = file(1000);
    let chunks = split(Shape::Nested, "mixed", &data, 99);
    let order = [3, 0, 1, 5, 4, 2, 10, 9, 8, 7, 6];
    for &i in &order[..6] {
        assert_eq!(
            sim.exec("da", &chunks[i].0, chunks[i].1.clone()).await.0,
            StatusCode::ACCEPTED
        );
    }
    let partway = &sim.uploads().await["mixed"];
    assert_eq!([&partway["received"], &partway["held_chunks"]], [6, 0]);
    assert_eq!(partway["bytes_hashed"], 6 * 99);
    let (status, again) = sim.exec("da", &chunks[4].0, chunks[4].1.clone()).await;
    assert_eq!(
        (status, &again["message"]),
        (StatusCode::ACCEPTED, &json!("duplicate"))
    );
    for &i in &order[6..10] {
        assert_eq!(
            sim.exec("da", &chunks[i].0, chunks[i].1.clone()).await.0,
            StatusCode::ACCEPTED
        );
    }
    let waiting = &sim.uploads().await["mixed"];
    assert_eq!(
        [
            &waiting["held_chunks"],
            &waiting["complete"],
            &waiting["sha256_matches"]
        ],
        [&json!(4), &json!(false), &Value::Null]
    );
    assert_eq!(
        sim.exec("da", &chunks[6].0, chunks[6].1.clone()).await.0,
        StatusCode::ACCEPTED
    );
    let done = &sim.uploads().await["mixed"];
    assert_eq!(done["order"], json!([3, 0, 1, 5, 4, 2, 4, 10, 9, 8, 7, 6]));
    assert_eq!(
        [&done["received"], &done["repeats"], &done["held_chunks"]],
        [11, 1, 0]
    );
    assert_eq!(
        [
            &done["complete"],
            &done["sha256_matches"],
            &done["size_matches"]
        ],
        [true; 3]
    );
}

/// Sends chunk body `body` under `key` and returns the refusal's message.
async fn refused(sim: &Sim, key: &str, body: String) -> String {
    let (status, answer) = sim.exec("da", key, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {answer}");
    answer["error"].as_str().expect("error").to_owned()
}

/// Chunk 1 (bytes 12..24 of a 30-byte file in 3 chunks) broken one way per case: the key it
/// is sent under, its bytes, its fields, and what the refusal must say. The last case is a
/// final chunk that stops short of the file's end.
fn broken_chunks(data: &[u8]) -> Vec<(&'static str, Vec<u8>, Value, &'static str)> {
    let second = fields("rules", data, 1, 3, 12..24);
    let edit = |name: &str, value: Value| {
        let mut fields = second.clone();
        fields[name] = value;
        fields
    };
    let bytes = data[12..24].to_vec();
    let mut corrupted = bytes.clone();
    corrupted[5] ^= 1;
    let mut no_file_sha = second.clone();
    no_file_sha
        .as_object_mut()
        .expect("object")
        .remove("fileSha256");
    let short = fields("rules", data, 1, 3, 12..22);
    let last = fields("rules", data, 2, 3, 24..29);
    vec![
        (
            "rules#1",
            corrupted,
            second.clone(),
            "sha256 is not the SHA-256",
        ),
        ("rules#1", bytes.clone(), edit("size", json!(13)), "size 13"),
        (
            "rules#2",
            bytes.clone(),
            second.clone(),
            "Idempotency-Key \"rules#1\"",
        ),
        (
            "rules#1",
            bytes.clone(),
            edit("offset", json!(15)),
            "chunk 0 ends at 12",
        ),
        (
            "rules#1",
            bytes.clone(),
            edit("count", json!(4)),
            "disagrees",
        ),
        (
            "rules#3",
            bytes.clone(),
            edit("index", json!(3)),
            "not below count",
        ),
        ("rules#1", data[12..22].to_vec(), short, "multiple of 3"),
        (
            "rules#1",
            bytes.clone(),
            edit("index", json!("1")),
            "index must be a whole number",
        ),
        ("rules#1", bytes, no_file_sha, "missing fileSha256"),
        ("rules#2", data[24..29].to_vec(), last, "ends at 29"),
    ]
}

#[tokio::test]
async fn chunks_that_break_the_rules_are_refused_with_the_reason() {
    let sim = start(SimConfig::default()).await;
    let data = file(30);
    let body = |range: std::ops::Range<usize>, i: usize| {
        let fields = fields("rules", &data, i, 3, range.clone());
        chunk_body(Shape::Nested, &data[range], &fields)
    };
    assert_eq!(
        sim.exec("da", "rules#0", body(0..12, 0)).await.0,
        StatusCode::ACCEPTED
    );
    let cases = broken_chunks(&data);
    for (key, bytes, fields, expected) in &cases {
        let message = refused(&sim, key, chunk_body(Shape::Nested, bytes, fields)).await;
        assert!(
            message.contains(expected),
            "{key}: {message} lacks {expected}"
        );
    }
    let upload = &sim.uploads().await["rules"];
    assert_eq!([&upload["received"], &upload["repeats"]], [1, 0]);
    let stats = sim.stats().await;
    assert_eq!(
        [&stats["bad_requests"], &stats["unique_keys"]],
        [&json!(cases.len()), &json!(1)]
    );
    assert_eq!(
        sim.exec("da", "rules#1", body(12..24, 1)).await.0,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn genesys_chunks_are_flat_fields_and_reassemble() {
    let sim = start(profile(ProfileName::Genesys)).await;
    let data = file(1_000_000);
    let chunks = split(Shape::Flat, "flat-file", &data, 300_000);
    for (i, (key, body)) in chunks.iter().enumerate() {
        let (status, output) = sim.exec("da", key, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{key}: {output}");
        assert_eq!(
            output["chunk"],
            json!({"uploadId": "flat-file", "index": i, "count": 4})
        );
        assert_eq!(
            output["metadata"],
            json!({}),
            "chunk fields are no metadata"
        );
    }
    let upload = &sim.uploads().await["flat-file"];
    assert_eq!(
        [
            &upload["complete"],
            &upload["sha256_matches"],
            &upload["size_matches"]
        ],
        [true; 3]
    );
    let mut partial: Value = serde_json::from_str(&chunks[0].1).expect("json");
    partial.as_object_mut().map(|m| m.remove("chunkSha256"));
    let (status, error) = sim.exec("da", "flat-file#0", partial.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["message"], "missing chunkSha256");
}

#[tokio::test]
async fn fail_chunk_fails_one_chunk_index_for_its_first_attempts() {
    let sim = start(SimConfig {
        fail_chunk: Some(cxone_worker::sim::FailChunk {
            index: 1,
            attempts: 2,
        }),
        ..SimConfig::default()
    })
    .await;
    let data = file(9);
    let chunks = split(Shape::Nested, "flaky", &data, 3);
    let mut seen = Vec::new();
    for i in [0, 1, 1, 1, 2] {
        seen.push(
            sim.exec("da", &chunks[i].0, chunks[i].1.clone())
                .await
                .0
                .as_u16(),
        );
    }
    assert_eq!(seen, [202, 503, 503, 202, 202]);
    let other = split(Shape::Nested, "other", &data, 3);
    assert_eq!(
        sim.exec("da", &other[1].0, other[1].1.clone()).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        sim.exec("da", &other[0].0, other[0].1.clone()).await.0,
        StatusCode::ACCEPTED
    );
    let stats = sim.stats().await;
    assert_eq!(stats["attempts"]["flaky#1"], 3);
    assert_eq!(stats["server_errors"], 3);
    let upload = &sim.uploads().await["flaky"];
    assert_eq!(
        [&upload["order"], &upload["complete"]],
        [&json!([0, 1, 2]), &json!(true)]
    );
}
