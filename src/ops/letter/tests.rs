//! Printing dead letters whole: every AMQP value type, nesting, hostile text, bodies.

use lapin::types::{ByteArray, DecimalValue, FieldArray, LongString, ShortString};
use time::format_description::well_known::Rfc3339;

use super::*;
use crate::broker::topology::text;

fn at(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

fn every_type() -> FieldTable {
    let mut inner = FieldTable::default();
    inner.insert("reason".into(), text("delivery_limit"));
    inner.insert("count".into(), AMQPValue::LongLongInt(3));
    inner.insert("time".into(), AMQPValue::Timestamp(1_767_225_600));
    let mut h = FieldTable::default();
    h.insert("b".into(), AMQPValue::Boolean(true));
    h.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    h.insert("u8".into(), AMQPValue::ShortShortUInt(8));
    h.insert("i16".into(), AMQPValue::ShortInt(-16));
    h.insert("u16".into(), AMQPValue::ShortUInt(16));
    h.insert("i32".into(), AMQPValue::LongInt(-32));
    h.insert("u32".into(), AMQPValue::LongUInt(32));
    h.insert("i64".into(), AMQPValue::LongLongInt(i64::MIN));
    h.insert("f32".into(), AMQPValue::Float(1.5));
    h.insert("f64".into(), AMQPValue::Double(f64::NAN));
    h.insert(
        "dec".into(),
        AMQPValue::DecimalValue(DecimalValue { scale: 3, value: 5 }),
    );
    h.insert(
        "short".into(),
        AMQPValue::ShortString(ShortString::from("s")),
    );
    h.insert(
        "latin1".into(),
        AMQPValue::LongString(LongString::from(vec![0xe9u8, 0x74, 0xe9])),
    );
    h.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 255])),
    );
    h.insert("ts-far".into(), AMQPValue::Timestamp(u64::MAX));
    h.insert("void".into(), AMQPValue::Void);
    h.insert("empty".into(), AMQPValue::FieldTable(FieldTable::default()));
    h.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::FieldTable(inner),
            AMQPValue::FieldArray(FieldArray::default()),
        ])),
    );
    h
}

fn letter(properties: &BasicProperties, body: &[u8]) -> DeadLetter {
    DeadLetter::read(7, properties, body)
}

#[test]
fn every_amqp_type_is_printed_readably() {
    let props = BasicProperties::default()
        .with_message_id("m-1".into())
        .with_delivery_mode(2)
        .with_timestamp(1_767_225_600)
        .with_headers(every_type());
    let body = br#"{"job_id":"j-1","file":"s3://b/k?X-Amz-Signature=s"}"#;
    let out = to_text(
        &letter(&props, body),
        &props,
        body,
        at("2026-01-01T00:01:00Z"),
        false,
    );
    for line in [
        "job id           \"j-1\"",
        "position         7",
        "file             \"s3://b/k\"",
        "dead-lettered by RabbitMQ",
        "properties:",
        "  delivery_mode: 2",
        "  message_id: \"m-1\"",
        "  timestamp: 1767225600 (2026-01-01T00:00:00Z)",
        "headers:",
        "  b: true",
        "  i8: -8",
        "  i64: -9223372036854775808",
        "  f32: 1.5",
        "  f64: NaN",
        "  dec: 0.005",
        "  short: \"s\"",
        "  latin1: 3 bytes (not UTF-8): e974e9",
        "  bytes: 2 bytes (byte array): 00ff",
        "  ts-far: 18446744073709551615",
        "  void: void",
        "  empty: {}",
        "  x-death:",
        "    [0]:",
        "      count: 3",
        "      reason: \"delivery_limit\"",
        "      time: 1767225600 (2026-01-01T00:00:00Z)",
        "    [1]: []",
        "body: 52 bytes, JSON (its file without credentials, as outputs show it; --raw shows it as stored)",
        "  \"job_id\": \"j-1\",",
        "  \"file\": \"s3://b/k\"",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "{line:?} missing from:\n{out}"
        );
    }

    let v = to_json(
        &letter(&props, body),
        &props,
        body,
        at("2026-01-01T00:01:00Z"),
        false,
    );
    let h = &v["headers"];
    assert_eq!(h["i64"], i64::MIN);
    assert!(h["f64"].is_null(), "NaN has no JSON number");
    assert_eq!(h["dec"], "0.005");
    assert_eq!(h["latin1"], json!({"base64": "6XTp"}));
    assert_eq!(h["bytes"], json!({"base64": "AP8="}));
    assert_eq!(h["ts-far"], json!({"timestamp": u64::MAX, "utc": null}));
    assert_eq!(h["x-death"][0]["reason"], "delivery_limit");
    assert_eq!(h["x-death"][0]["time"]["utc"], "2026-01-01T00:00:00Z");
    assert_eq!(v["properties"]["delivery_mode"], 2);
    assert_eq!(v["body"]["json"]["job_id"], "j-1");
    assert_eq!(v["body"]["bytes"], 52);
    assert_eq!(v["file"], "s3://b/k", "the file as outputs show it");
}

#[test]
fn deep_nesting_is_cut_not_followed() {
    let mut value = AMQPValue::Void;
    for _ in 0..10_000 {
        let mut t = FieldTable::default();
        t.insert("n".into(), value);
        value = AMQPValue::FieldTable(t);
    }
    let mut h = FieldTable::default();
    h.insert("deep".into(), value);
    let props = BasicProperties::default().with_headers(h);
    let out = to_text(
        &letter(&props, b""),
        &props,
        b"",
        at("2026-01-01T00:00:00Z"),
        false,
    );
    assert!(out.contains("… (nested deeper than 16 levels)"), "{out}");
    assert!(out.lines().count() < 40);
    let v = to_json(
        &letter(&props, b""),
        &props,
        b"",
        at("2026-01-01T00:00:00Z"),
        false,
    );
    assert!(serde_json::to_string(&v).unwrap().contains("nested deeper"));
    // Dropping 10,000 nested tables is the test's own recursion, not the printer's.
    std::mem::forget(props);
}

#[test]
fn hostile_text_never_reaches_the_terminal_raw() {
    let mut h = FieldTable::default();
    h.insert("x-error".into(), text("boom\u{1b}[2J\u{202e}gnp.exe\r\n"));
    h.insert("name\u{1b}".into(), text("v"));
    let props = BasicProperties::default().with_headers(h);
    let body = "line 1\u{1b}]0;owned\u{7}\n\tline 2".as_bytes();
    let out = to_text(
        &letter(&props, body),
        &props,
        body,
        at("2026-01-01T00:00:00Z"),
        false,
    );
    for c in ['\u{1b}', '\u{7}', '\u{202e}', '\r'] {
        assert!(!out.contains(c), "{c:?} printed raw:\n{out}");
    }
    assert!(
        out.contains(r#"x-error: "boom\u{1b}[2J\u{202e}gnp.exe\r\n""#),
        "{out}"
    );
    assert!(out.contains(r#""name\u{1b}": "v""#), "{out}");
    assert!(out.contains("body: 24 bytes, text (not JSON)"), "{out}");
    assert!(
        out.contains("line 1\\u{1b}]0;owned\\u{7}\n\tline 2\n"),
        "{out}"
    );
}

#[test]
fn binary_bodies_are_dumped_in_hex() {
    let body: Vec<u8> = b"{not json \xff\x00 and more bytes".to_vec();
    let props = BasicProperties::default();
    let out = to_text(
        &letter(&props, &body),
        &props,
        &body,
        at("2026-01-01T00:00:00Z"),
        false,
    );
    assert!(out.contains("body: 27 bytes, binary (not UTF-8)"), "{out}");
    assert!(
        out.contains(
            "00000000  7b 6e 6f 74 20 6a 73 6f  6e 20 ff 00 20 61 6e 64  |{not json .. and|"
        ),
        "{out}"
    );
    assert!(
        out.contains("00000010  20 6d 6f 72 65 20 62 79  74 65 73 "),
        "{out}"
    );
    assert!(out.contains("                 | more bytes|\n"), "{out}");
    assert!(
        out.contains("properties:\n  (none)\nheaders:\n  (none)\n"),
        "{out}"
    );
    let v = to_json(
        &letter(&props, &body),
        &props,
        &body,
        at("2026-01-01T00:00:00Z"),
        false,
    );
    assert_eq!(v["body"]["bytes"], 27);
    assert!(v["body"]["base64"].is_string());
    let empty = to_json(
        &letter(&props, b""),
        &props,
        b"",
        at("2026-01-01T00:00:00Z"),
        false,
    );
    assert_eq!(empty["body"], json!({"bytes": 0, "text": ""}));
    assert!(empty["file"].is_null());
}

#[test]
fn json_bodies_keep_their_order_and_digits() {
    // A raw right-to-left override inside a string: valid JSON, and a terminal obeys it.
    let body = r#"{"z":1,"a":[],"n":123456789012345678901234567890,"o":{"k":[1, {"x":"\u001b"}]},"s":"aRLOb:,{"}"#
        .replace("RLO", "\u{202e}");
    let props = BasicProperties::default();
    let out = to_text(
        &letter(&props, body.as_bytes()),
        &props,
        body.as_bytes(),
        at("2026-01-01T00:00:00Z"),
        false,
    );
    let want = r#"{
  "z": 1,
  "a": [],
  "n": 123456789012345678901234567890,
  "o": {
    "k": [
      1,
      {
        "x": "\u001b"
      }
    ]
  },
  "s": "a\u202eb:,{"
}"#;
    assert!(out.ends_with(&format!("JSON\n{want}\n")), "{out}");
}

#[test]
fn credentials_in_the_bodys_file_are_hidden_unless_asked_for() {
    let now = at("2026-01-01T00:00:00Z");
    let props = BasicProperties::default();
    let body = br#"{"job_id":"j","file":"https://u:pw@h.example/x.pdf?sig=s","n":1.50}"#;
    let d = letter(&props, body);
    let out = to_text(&d, &props, body, now, false);
    assert!(!out.contains("pw") && !out.contains("sig="), "{out}");
    assert!(
        out.contains("  \"file\": \"https://h.example/x.pdf\",\n  \"n\": 1.50\n"),
        "{out}"
    );
    assert!(out.contains("JSON (its file without credentials"), "{out}");
    let raw = to_text(&d, &props, body, now, true);
    assert!(
        raw.contains("https://u:pw@h.example/x.pdf?sig=s") && !raw.contains("without credentials")
    );
    let v = to_json(&d, &props, body, now, false);
    assert_eq!(v["body"]["json"]["file"], "https://h.example/x.pdf");
    let v = to_json(&d, &props, body, now, true);
    assert_eq!(
        v["body"]["json"]["file"],
        "https://u:pw@h.example/x.pdf?sig=s"
    );
    // Escaped otherwise than serde writes it: still hidden.
    let odd = br#"{"file":"https:\/\/u:pw@h.example\/x.pdf?sig=s"}"#;
    let out = to_text(&letter(&props, odd), &props, odd, now, false);
    assert!(
        !out.contains("pw") && out.contains("https://h.example/x.pdf"),
        "{out}"
    );
    // Nothing to hide: the body is shown as sent, without a note.
    let plain = br#"{"file":"file:///in/a.pdf"}"#;
    let out = to_text(&letter(&props, plain), &props, plain, now, false);
    assert!(
        out.contains("JSON\n{\n  \"file\": \"file:///in/a.pdf\"\n}\n"),
        "{out}"
    );
}

#[test]
fn decimals_are_exact() {
    assert_eq!(decimal(1234, 2), "12.34");
    assert_eq!(decimal(5, 3), "0.005");
    assert_eq!(decimal(7, 0), "7");
    assert_eq!(decimal(u32::MAX, 255).len(), 257);
}
