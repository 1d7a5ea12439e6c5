//! One dead letter printed whole for `dlq show`: what it says (kind, error, attempts,
//! replays, file, who dead-lettered it), every property and header, and its body.
//!
//! Everything here comes from whoever published the message, so nothing is trusted:
//! header values of every AMQP type are printed (nested tables and arrays too, to a
//! bounded depth), strings are printed quoted with their control characters escaped,
//! and a body is shown as pretty JSON, as text with escapes, or as a hex dump, so that
//! no byte of it can drive the operator's terminal. The job's `file` inside a JSON
//! body is shown as every output shows it (no userinfo, query or fragment, where a
//! password or a presigned signature lives) unless the operator asks for the body as
//! stored (`raw`): output pasted into a ticket must not carry a credential.

use std::fmt::Write as _;

use base64::Engine as _;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::dead::DeadLetter;
use super::table::short_duration;
use crate::job::shown_file;
use crate::text::rfc3339;

/// Nesting shown at most; a deeper value is summarized. A producer can nest tables
/// as deep as a frame allows, and neither the terminal nor the stack needs that.
const MAX_DEPTH: usize = 16;

/// One dead letter as text, for a terminal; `raw` shows the body's `file` as stored.
pub fn to_text(
    letter: &DeadLetter,
    properties: &BasicProperties,
    body: &[u8],
    now: OffsetDateTime,
    raw: bool,
) -> String {
    let mut out = String::new();
    let dash = || "-".to_owned();
    let failed_at = letter.failed_at.map_or_else(dash, |t| {
        let age = letter.age(now).map(short_duration).unwrap_or_default();
        format!("{} ({age} ago)", rfc3339(t))
    });
    let by = if letter.by_broker {
        "RabbitMQ"
    } else {
        "worker"
    };
    let fields = [
        ("job id", quoted(&letter.job_id)),
        ("position", letter.position.to_string()),
        ("error kind", quoted(&letter.kind)),
        ("error", quoted(&letter.error)),
        (
            "attempts",
            letter.attempts.map_or_else(dash, |n| n.to_string()),
        ),
        ("replays", letter.replays.to_string()),
        ("failed at", failed_at),
        ("file", letter.file.as_deref().map_or_else(dash, quoted)),
        (
            "message id",
            letter.message_id.as_deref().map_or_else(dash, quoted),
        ),
        ("dead-lettered by", by.to_owned()),
    ];
    for (name, value) in fields {
        let _ = writeln!(out, "{name:<17}{value}");
    }
    out.push_str("properties:\n");
    let props = property_values(properties);
    if props.is_empty() {
        out.push_str("  (none)\n");
    }
    for (name, value) in &props {
        write_entry(&mut out, 1, name, value);
    }
    out.push_str("headers:\n");
    match properties.headers() {
        Some(h) if !h.inner().is_empty() => {
            for (name, value) in h.inner() {
                write_entry(&mut out, 1, name.as_str(), value);
            }
        }
        _ => out.push_str("  (none)\n"),
    }
    write_body(&mut out, body, raw);
    out
}

/// One dead letter as JSON: the fields of `dlq list --json`, then `properties`,
/// `headers` and `body` (`{"bytes", "json"}`, `{"bytes", "text"}` or `{"bytes",
/// "base64"}`: JSON when it is JSON, text when it is UTF-8, base64 otherwise).
pub fn to_json(
    letter: &DeadLetter,
    properties: &BasicProperties,
    body: &[u8],
    now: OffsetDateTime,
    raw: bool,
) -> Value {
    let mut v = letter.to_json(now);
    let props: Map<String, Value> = property_values(properties)
        .iter()
        .map(|(k, v)| ((*k).to_owned(), value_json(v, 0)))
        .collect();
    v["properties"] = Value::Object(props);
    v["headers"] = properties
        .headers()
        .as_ref()
        .map_or_else(|| json!({}), |h| table_json(h, 0));
    let shown = match (
        serde_json::from_slice::<Value>(body),
        std::str::from_utf8(body),
    ) {
        (Ok(mut parsed), _) => {
            if let (false, Some(file)) = (raw, parsed.get("file").and_then(Value::as_str)) {
                parsed["file"] = Value::String(shown_file(file));
            }
            json!({"bytes": body.len(), "json": parsed})
        }
        (Err(_), Ok(text)) => json!({"bytes": body.len(), "text": text}),
        _ => {
            json!({"bytes": body.len(), "base64": base64::engine::general_purpose::STANDARD.encode(body)})
        }
    };
    v["body"] = shown;
    v
}

/// The basic properties that are set, as AMQP values, so that one printer serves
/// them and the headers alike.
fn property_values(p: &BasicProperties) -> Vec<(&'static str, AMQPValue)> {
    let text = |name, v: &Option<lapin::types::ShortString>| {
        v.as_ref()
            .map(|s| (name, AMQPValue::ShortString(s.clone())))
    };
    [
        text("content_type", p.content_type()),
        text("content_encoding", p.content_encoding()),
        p.delivery_mode()
            .map(|m| ("delivery_mode", AMQPValue::ShortShortUInt(m))),
        p.priority()
            .map(|n| ("priority", AMQPValue::ShortShortUInt(n))),
        text("correlation_id", p.correlation_id()),
        text("reply_to", p.reply_to()),
        text("expiration", p.expiration()),
        text("message_id", p.message_id()),
        p.timestamp()
            .map(|t| ("timestamp", AMQPValue::Timestamp(t))),
        text("type", p.kind()),
        text("user_id", p.user_id()),
        text("app_id", p.app_id()),
        text("cluster_id", p.cluster_id()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `name: value` at `depth`, or `name:` with the table or array below it.
fn write_entry(out: &mut String, depth: usize, name: &str, value: &AMQPValue) {
    let indent = "  ".repeat(depth);
    let name = escaped(name);
    match scalar(value) {
        Some(text) => {
            let _ = writeln!(out, "{indent}{name}: {text}");
        }
        None if depth >= MAX_DEPTH => {
            let _ = writeln!(
                out,
                "{indent}{name}: … (nested deeper than {MAX_DEPTH} levels)"
            );
        }
        None => {
            let _ = writeln!(out, "{indent}{name}:");
            match value {
                AMQPValue::FieldTable(t) => {
                    for (k, v) in t.inner() {
                        write_entry(out, depth + 1, k.as_str(), v);
                    }
                }
                AMQPValue::FieldArray(a) => {
                    for (i, v) in a.as_slice().iter().enumerate() {
                        write_entry(out, depth + 1, &format!("[{i}]"), v);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A value on one line; `None` for a table or array that has entries.
fn scalar(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::DecimalValue(d) => decimal(d.value, d.scale),
        AMQPValue::ShortString(s) => quoted(s.as_str()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => quoted(text),
            Err(_) => bytes(s.as_bytes(), "not UTF-8"),
        },
        AMQPValue::ByteArray(b) => bytes(b.as_slice(), "byte array"),
        AMQPValue::Timestamp(t) => match timestamp(*t) {
            Some(at) => format!("{t} ({at})"),
            None => t.to_string(),
        },
        AMQPValue::Void => "void".to_owned(),
        AMQPValue::FieldTable(t) if t.inner().is_empty() => "{}".to_owned(),
        AMQPValue::FieldArray(a) if a.as_slice().is_empty() => "[]".to_owned(),
        AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_) => return None,
    })
}

fn value_json(value: &AMQPValue, depth: usize) -> Value {
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        // NaN and infinities have no JSON number: null.
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => json!(decimal(d.value, d.scale)),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => json!(text),
            Err(_) => {
                json!({"base64": base64::engine::general_purpose::STANDARD.encode(s.as_bytes())})
            }
        },
        AMQPValue::ByteArray(b) => {
            json!({"base64": base64::engine::general_purpose::STANDARD.encode(b.as_slice())})
        }
        AMQPValue::Timestamp(t) => json!({"timestamp": t, "utc": timestamp(*t)}),
        AMQPValue::Void => Value::Null,
        _ if depth >= MAX_DEPTH => json!(format!("… (nested deeper than {MAX_DEPTH} levels)")),
        AMQPValue::FieldTable(t) => table_json(t, depth + 1),
        AMQPValue::FieldArray(a) => Value::Array(
            a.as_slice()
                .iter()
                .map(|v| value_json(v, depth + 1))
                .collect(),
        ),
    }
}

fn table_json(table: &FieldTable, depth: usize) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_json(v, depth)))
            .collect(),
    )
}

/// An AMQP decimal (`value` × 10^-`scale`) written out exactly: `1234`, scale 2 -> `12.34`.
fn decimal(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

/// An AMQP timestamp (seconds since the epoch) as RFC 3339, when it is a real time.
fn timestamp(seconds: u64) -> Option<String> {
    let t = i64::try_from(seconds).ok()?;
    OffsetDateTime::from_unix_timestamp(t).ok().map(rfc3339)
}

/// Text quoted as Rust writes it: control characters (and the invisible ones that
/// reorder a line) escaped, so that the terminal shows them instead of obeying.
fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// A header name: unquoted when it is plain, escaped like a value otherwise.
fn escaped(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_graphic()) {
        name.to_owned()
    } else {
        quoted(name)
    }
}

/// Bytes in hex, with their count and why they are not text.
fn bytes(b: &[u8], why: &str) -> String {
    format!("{} bytes ({why}): {}", b.len(), hex::encode(b))
}

/// The body: pretty JSON when it is JSON, else text with escapes, else a hex dump.
fn write_body(out: &mut String, body: &[u8], raw: bool) {
    if body.is_empty() {
        out.push_str("body: 0 bytes\n");
        return;
    }
    if let (Ok(text), true) = (
        std::str::from_utf8(body),
        serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok(),
    ) {
        let hidden = if raw { None } else { hide_file(text) };
        let note = match hidden {
            Some(_) => {
                " (its file without credentials, as outputs show it; --raw shows it as stored)"
            }
            None => "",
        };
        let text = hidden.as_deref().unwrap_or(text);
        let _ = writeln!(
            out,
            "body: {} bytes, JSON{note}\n{}",
            body.len(),
            pretty_json(text)
        );
        return;
    }
    match std::str::from_utf8(body) {
        Ok(text) => {
            let _ = writeln!(out, "body: {} bytes, text (not JSON)", body.len());
            for line in text.lines() {
                let safe: String = line
                    .chars()
                    .map(|c| match c {
                        '\t' => "\t".to_owned(),
                        c if c.is_control() => c.escape_debug().to_string(),
                        c => c.to_string(),
                    })
                    .collect();
                let _ = writeln!(out, "{safe}");
            }
        }
        Err(_) => {
            let _ = writeln!(out, "body: {} bytes, binary (not UTF-8)", body.len());
            hex_dump(out, body);
        }
    }
}

/// The JSON text with its top-level `file` as outputs show it; `None` when that
/// hides nothing. The string is replaced in the text itself, so that the rest stays
/// as sent; one escaped otherwise than serde writes it (`\/`, say) makes the body
/// rebuilt from its parsed value instead: key order lost, the credential hidden all
/// the same.
fn hide_file(text: &str) -> Option<String> {
    let mut parsed: Value = serde_json::from_str(text).ok()?;
    let file = parsed.get("file")?.as_str()?;
    let shown = shown_file(file);
    if shown == file {
        return None;
    }
    let token = serde_json::to_string(file).ok()?;
    let replacement = serde_json::to_string(&shown).ok()?;
    if text.matches(token.as_str()).count() == 1 {
        return Some(text.replacen(token.as_str(), &replacement, 1));
    }
    parsed["file"] = Value::String(shown);
    serde_json::to_string(&parsed).ok()
}

/// Valid JSON text indented, two spaces a level. Reformatted from the text rather
/// than from a parsed value, so that the producer's key order and number spelling
/// (digits past what a float holds) are shown as sent. Inside strings, characters
/// that a terminal would obey rather than show (bidirectional overrides, zero-width
/// marks) are written as `\uXXXX` escapes; JSON already escapes control characters.
fn pretty_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let (mut in_string, mut escape) = (false, false);
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                _ if escape => escape = false,
                '\\' => escape = true,
                '"' => in_string = false,
                c if !c.is_ascii() && c.escape_debug().next() == Some('\\') => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                    continue;
                }
                _ => {}
            }
            out.push(c);
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // An empty object or array stays on one line.
                while chars.peek().is_some_and(|n| n.is_ascii_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.extend(chars.next());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// `00000000  7b 6e 6f 74 20 6a 73 6f  6e ff                    |{not json.|`
fn hex_dump(out: &mut String, body: &[u8]) {
    for (i, row) in body.chunks(16).enumerate() {
        let _ = write!(out, "{:08x} ", i * 16);
        for j in 0..16 {
            if j == 8 {
                out.push(' ');
            }
            match row.get(j) {
                Some(b) => {
                    let _ = write!(out, " {b:02x}");
                }
                None => out.push_str("   "),
            }
        }
        let ascii: String = row
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(out, "  |{ascii}|");
    }
}

#[cfg(test)]
mod tests;
