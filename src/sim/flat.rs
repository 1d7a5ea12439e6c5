//! The genesys profile's flat execute body: one JSON object holding the payload, its content
//! type, the `chunk*` fields and every metadata key, checked as strictly as the contract says
//! a flat body is built (scalar metadata only, no reserved or repeated keys).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::chunk::{ChunkFields, FLAT_NAMES};
use super::payload::{FieldNames, Invalid, Payload, is_strict_base64};

/// Keys that Genesys's execute reserves: a flat body may not carry them as metadata.
const RESERVED: [&str; 3] = ["orgId", "integrationId", "rawRequest"];

/// Parses and checks a flat body. The payload string is borrowed from the body when the JSON
/// did not escape anything in it.
pub(crate) fn parse<'b>(body: &'b [u8], names: &FieldNames) -> Result<Payload<'b>, Invalid> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parts = Parts::read(&mut de, names)
        .and_then(|parts| de.end().map(|()| parts))
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                Invalid::Body("the execute body must be one JSON object".to_owned())
            }
            _ => Invalid::Json,
        })?;
    parts.check(names)
}

/// A flat body split by role, before its checks.
#[derive(Default)]
struct Parts<'b> {
    payload: Option<MaybeStr<'b>>,
    content_type: Option<Value>,
    chunk: Map<String, Value>,
    metadata: Map<String, Value>,
    /// The first key that appeared twice: JSON allows it, the contract's flat body does not.
    repeated: Option<String>,
}

impl<'b> Parts<'b> {
    fn read(
        de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'b>>,
        names: &FieldNames,
    ) -> Result<Self, serde_json::Error> {
        PartsSeed { names }.deserialize(de)
    }

    fn check(self, names: &FieldNames) -> Result<Payload<'b>, Invalid> {
        let bad = |message: String| Err(Invalid::Body(message));
        if let Some(key) = self.repeated {
            return bad(format!("field {key} appears more than once"));
        }
        let value = match self.payload {
            None => return bad(format!("missing field {}", names.payload)),
            Some(MaybeStr::Other) => return bad(format!("{} must be a string", names.payload)),
            Some(MaybeStr::Str(value)) => value,
        };
        if !is_strict_base64(&value) {
            return bad(format!(
                "{} is not standard base64 (padded, no line breaks)",
                names.payload
            ));
        }
        let content_type = match self.content_type {
            None => return bad(format!("missing field {}", names.content_type)),
            Some(Value::String(s)) => s,
            Some(_) => return bad(format!("{} must be a string", names.content_type)),
        };
        for (key, value) in &self.metadata {
            if RESERVED.contains(&key.as_str()) {
                return bad(format!("{key} is reserved and cannot be a metadata key"));
            }
            if value.is_object() || value.is_array() {
                return bad(format!(
                    "{key} must be a string, number, boolean or null: a flat body holds no \
                     objects or arrays{}",
                    if key == "inputs" {
                        " (this is the nested body of the seed API, not the flat one)"
                    } else {
                        ""
                    }
                ));
            }
        }
        let chunk = ChunkFields::from_flat(self.chunk).map_err(Invalid::Body)?;
        Ok(Payload {
            value,
            content_type: Cow::Owned(content_type),
            metadata: Value::Object(self.metadata),
            chunk,
        })
    }

    /// Files `value` under `key`'s role, noting the first repeated key.
    fn insert(&mut self, key: String, value: Value, names: &FieldNames) {
        let earlier = if key == names.content_type {
            self.content_type.replace(value)
        } else if FLAT_NAMES.contains(&key.as_str()) {
            self.chunk.insert(key.clone(), value)
        } else {
            self.metadata.insert(key.clone(), value)
        };
        if earlier.is_some() && self.repeated.is_none() {
            self.repeated = Some(key);
        }
    }
}

struct PartsSeed<'n> {
    names: &'n FieldNames,
}

impl<'de> DeserializeSeed<'de> for PartsSeed<'_> {
    type Value = Parts<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PartsSeed<'_> {
    type Value = Parts<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut parts = Parts::default();
        while let Some(key) = map.next_key::<String>()? {
            if key == self.names.payload {
                let value = map.next_value::<MaybeStr<'de>>()?;
                if parts.payload.replace(value).is_some() && parts.repeated.is_none() {
                    parts.repeated = Some(key);
                }
            } else {
                let value = map.next_value::<Value>()?;
                parts.insert(key, value, self.names);
            }
        }
        Ok(parts)
    }
}

/// The payload field's value: the string (borrowed when unescaped), or a note that it was
/// something else, so that the answer can say so instead of "invalid json".
enum MaybeStr<'b> {
    Str(Cow<'b, str>),
    Other,
}

impl<'de> Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MaybeStrVisitor)
    }
}

struct MaybeStrVisitor;

impl<'de> Visitor<'de> for MaybeStrVisitor {
    type Value = MaybeStr<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(MaybeStr::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(MaybeStr::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(MaybeStr::Str(Cow::Owned(v)))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(MaybeStr::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(MaybeStr::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(MaybeStr::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(MaybeStr::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(MaybeStr::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(MaybeStr::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(MaybeStr::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::config::{DEFAULT_CONTENT_TYPE_FIELD, DEFAULT_PAYLOAD_FIELD};
    use serde_json::json;

    fn names() -> FieldNames {
        FieldNames {
            payload: DEFAULT_PAYLOAD_FIELD.into(),
            content_type: DEFAULT_CONTENT_TYPE_FIELD.into(),
        }
    }

    fn refusal(body: &str) -> String {
        match parse(body.as_bytes(), &names()) {
            Err(Invalid::Body(message)) => message,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_flat_body_splits_into_payload_type_and_metadata() {
        let body =
            r#"{"binaryPayload":"QUJD","contentType":"a/b","source":"x","n":2,"ok":true,"z":null}"#;
        let p = parse(body.as_bytes(), &names()).expect("valid");
        assert!(matches!(p.value, Cow::Borrowed("QUJD")));
        assert_eq!(p.content_type, "a/b");
        assert_eq!(
            p.metadata,
            json!({"source": "x", "n": 2, "ok": true, "z": null})
        );
        assert!(p.chunk.is_none());
    }

    #[test]
    fn flat_refusals_say_what_is_wrong() {
        let cases = [
            (r#"{"contentType":"a"}"#, "missing field binaryPayload"),
            (
                r#"{"binaryPayload":5,"contentType":"a"}"#,
                "binaryPayload must be a string",
            ),
            (
                r#"{"binaryPayload":"QUJ","contentType":"a"}"#,
                "not standard base64",
            ),
            (r#"{"binaryPayload":"QUJD"}"#, "missing field contentType"),
            (
                r#"{"binaryPayload":"QUJD","contentType":1}"#,
                "contentType must be a string",
            ),
            (
                r#"{"binaryPayload":"QUJD","contentType":"a","orgId":"o"}"#,
                "orgId is reserved",
            ),
            (
                r#"{"binaryPayload":"QUJD","contentType":"a","m":{"k":1}}"#,
                "m must be a string",
            ),
            (
                r#"{"binaryPayload":"QUJD","contentType":"a","m":[1]}"#,
                "no objects or arrays",
            ),
            (
                r#"{"binaryPayload":"QUJD","contentType":"a","m":1,"m":2}"#,
                "m appears more than once",
            ),
            (
                r#"{"binaryPayload":"QUJD","binaryPayload":"QUJD","contentType":"a"}"#,
                "binaryPayload appears",
            ),
            (
                r#"{"binaryPayload":"QUJD","contentType":"a","chunkIndex":0}"#,
                "missing chunkUploadId",
            ),
            ("[1]", "one JSON object"),
        ];
        for (body, expected) in cases {
            let message = refusal(body);
            assert!(message.contains(expected), "{body}: {message}");
        }
        let nested = json!({"inputs": {"binaryPayload": {"value": "QUJD", "contentType": "a"}}});
        let message = refusal(&nested.to_string());
        assert!(message.contains("missing field binaryPayload"), "{message}");
        let with_payload = r#"{"binaryPayload":"QUJD","contentType":"a","inputs":{}}"#;
        assert!(refusal(with_payload).contains("nested body of the seed API"));
    }

    #[test]
    fn broken_json_is_told_apart() {
        for body in ["{", "", r#"{"binaryPayload":"QUJD"} x"#] {
            assert_eq!(
                parse(body.as_bytes(), &names()).err(),
                Some(Invalid::Json),
                "{body}"
            );
        }
    }
}
