//! Reading and validating `/manage` JSON bodies. Every problem is collected into the
//! 422 `fields` map at once, unknown keys included, so an operator fixes a request in
//! one round trip. Absent, `null` and a value are three different things for PATCH.

use std::collections::BTreeMap;
use std::fmt;

use actix_web::web;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use ipnet::IpNet;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::ManageError;

/// A PATCH field: not sent, sent as `null`, or sent with a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<T> {
    Absent,
    Null,
    Value(T),
}

impl<T> Field<T> {
    /// For nullable columns: `None` = leave alone, `Some(None)` = clear.
    pub fn patch(self) -> Option<Option<T>> {
        match self {
            Field::Absent => None,
            Field::Null => Some(None),
            Field::Value(v) => Some(Some(v)),
        }
    }

    pub fn value(self) -> Option<T> {
        match self {
            Field::Value(v) => Some(v),
            Field::Absent | Field::Null => None,
        }
    }
}

/// Reads the request body up to `limit` bytes.
pub async fn read_limited(
    mut payload: web::Payload,
    limit: u64,
) -> Result<web::Bytes, ManageError> {
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            e if crate::http::edge::conn::is_body_timeout(&e) => ManageError::RequestTimeout,
            e => ManageError::InvalidJson(format!("cannot read the request body: {e}")),
        })?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(ManageError::PayloadTooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub struct Body {
    map: Map<String, Value>,
    errors: BTreeMap<String, String>,
}

impl Body {
    /// An empty body counts as `{}` (for calls such as rotate whose fields are optional).
    pub fn parse(bytes: &[u8]) -> Result<Self, ManageError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self {
                map: Map::new(),
                errors: BTreeMap::new(),
            });
        }
        let StrictJson(value) = serde_json::from_slice(bytes).map_err(|e| {
            ManageError::InvalidJson(format!("the request body is not valid JSON: {e}"))
        })?;
        match value {
            Value::Object(map) => Ok(Self {
                map,
                errors: BTreeMap::new(),
            }),
            _ => Err(ManageError::field("body", "must be a JSON object")),
        }
    }

    fn take<T>(&mut self, key: &str, parse: impl FnOnce(&Value) -> Result<T, String>) -> Field<T> {
        match self.map.remove(key) {
            None => Field::Absent,
            Some(Value::Null) => Field::Null,
            Some(v) => match parse(&v) {
                Ok(t) => Field::Value(t),
                Err(why) => {
                    self.errors.insert(key.to_owned(), why);
                    Field::Absent
                }
            },
        }
    }

    pub fn error(&mut self, key: &str, why: impl Into<String>) {
        self.errors
            .entry(key.to_owned())
            .or_insert_with(|| why.into());
    }

    pub fn has_error(&self, key: &str) -> bool {
        self.errors.contains_key(key)
    }

    pub fn string(&mut self, key: &str, max_chars: usize) -> Field<String> {
        self.take(key, |v| match v {
            Value::String(s) if s.trim().is_empty() => Err("must not be empty".into()),
            Value::String(s) if s.chars().count() > max_chars => {
                Err(format!("must be at most {max_chars} characters"))
            }
            Value::String(s) if s.chars().any(char::is_control) => {
                Err("must not contain control characters".into())
            }
            Value::String(s) => Ok(s.clone()),
            _ => Err("must be a string".into()),
        })
    }

    /// A name (project, token, user): a [`Body::string`] that also has no
    /// invisible format characters, so two names that look the same are the same.
    pub fn name(&mut self, key: &str, max_chars: usize) -> Field<String> {
        match self.string(key, max_chars) {
            Field::Value(s) if s.chars().any(is_format_char) => {
                self.error(
                    key,
                    "must not contain invisible format characters (zero-width, bidi controls)",
                );
                Field::Absent
            }
            other => other,
        }
    }

    /// A [`Body::name`] that must be present and non-null.
    pub fn required_name(&mut self, key: &str, max_chars: usize) -> Option<String> {
        match self.name(key, max_chars) {
            Field::Value(s) => Some(s),
            Field::Null | Field::Absent => {
                self.error(key, "is required");
                None
            }
        }
    }

    /// A secret string taken as sent (no trimming, any characters): passwords.
    /// `None` when absent, null or not a string (the error is recorded).
    pub fn take_raw_string(&mut self, key: &str, max_chars: usize) -> Option<String> {
        match self.take(key, |v| match v {
            Value::String(s) if s.chars().count() > max_chars => {
                Err(format!("must be at most {max_chars} characters"))
            }
            Value::String(s) => Ok(s.clone()),
            _ => Err("must be a string".into()),
        }) {
            Field::Value(s) => Some(s),
            Field::Null | Field::Absent => None,
        }
    }

    /// A string that must be present and non-null.
    pub fn required_string(&mut self, key: &str, max_chars: usize) -> Option<String> {
        match self.string(key, max_chars) {
            Field::Value(s) => Some(s),
            Field::Null | Field::Absent => {
                self.error(key, "is required");
                None
            }
        }
    }

    pub fn bool(&mut self, key: &str) -> Field<bool> {
        self.take(key, |v| {
            v.as_bool()
                .ok_or_else(|| "must be true or false".to_owned())
        })
    }

    pub fn int(&mut self, key: &str, min: i64, max: i64) -> Field<i64> {
        self.take(key, |v| match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!("must be an integer from {min} to {max}")),
        })
    }

    pub fn timestamp(&mut self, key: &str) -> Field<DateTime<Utc>> {
        self.take(key, |v| {
            v.as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
                .ok_or_else(|| {
                    "must be an RFC 3339 timestamp such as 2026-12-31T23:59:59Z".to_owned()
                })
        })
    }

    pub fn models(&mut self, key: &str) -> Field<Vec<String>> {
        self.take(key, |v| {
            let items = v.as_array().ok_or("must be an array of model names")?;
            if items.len() > 256 {
                return Err("must have at most 256 entries".into());
            }
            items
                .iter()
                .map(|m| match m.as_str() {
                    Some(s)
                        if !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control) =>
                    {
                        Ok(s.to_owned())
                    }
                    _ => Err(
                        "every entry must be a model name or glob of 1 to 256 characters"
                            .to_owned(),
                    ),
                })
                .collect()
        })
    }

    /// Configured provider names, each at most once, in the caller's order.
    pub fn providers(&mut self, key: &str, known: &[&str]) -> Field<Vec<String>> {
        self.take(key, |v| {
            let items = v.as_array().ok_or("must be an array of provider names")?;
            let mut out: Vec<String> = Vec::with_capacity(items.len());
            for item in items {
                let name = item
                    .as_str()
                    .ok_or_else(|| "every entry must be a provider name".to_owned())?;
                if !known.contains(&name) {
                    return Err(format!(
                        "{name:?} is not a configured provider (known: {})",
                        known.join(", ")
                    ));
                }
                if out.iter().any(|n| n == name) {
                    return Err(format!("{name:?} is listed twice"));
                }
                out.push(name.to_owned());
            }
            Ok(out)
        })
    }

    pub fn cidrs(&mut self, key: &str) -> Field<Vec<IpNet>> {
        self.take(key, |v| {
            let items = v.as_array().ok_or("must be an array of CIDR ranges")?;
            if items.len() > 256 {
                return Err("must have at most 256 entries".into());
            }
            items
                .iter()
                .map(|c| {
                    let s = c
                        .as_str()
                        .ok_or_else(|| "every entry must be a string".to_owned())?;
                    parse_cidr(s).ok_or_else(|| format!("{s:?} is not an IP address or CIDR range"))
                })
                .collect()
        })
    }

    /// Fails with 422 listing every invalid and every unknown field.
    pub fn finish(mut self) -> Result<(), ManageError> {
        for key in std::mem::take(&mut self.map)
            .keys()
            .cloned()
            .collect::<Vec<_>>()
        {
            self.errors.insert(key, "unknown field".into());
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ManageError::Validation(self.errors))
        }
    }
}

/// A JSON value whose objects never repeat a key. `serde_json` keeps the last of
/// two equal keys silently, so `{"name":"a","name":"b"}` would mean whatever the
/// last parser in the chain decides; `/v1` refuses such bodies and so does
/// `/manage` (400 `invalid_json`). The nesting limit stays serde_json's.
struct StrictJson(Value);

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let StrictJson(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Unicode general category Cf (format): characters that render as nothing or
/// reorder the text around them (zero-width space and joiners, bidi embeddings,
/// overrides and isolates, the byte order mark, tag characters). Control
/// characters (Cc) are refused by [`Body::string`] through `char::is_control`.
pub fn is_format_char(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// A CIDR, or a bare address meaning exactly that host.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_all_errors_and_unknown_fields() {
        let mut b = Body::parse(br#"{"name":"","rate_limit_rpm":-1,"extra":1}"#).unwrap();
        b.required_string("name", 100);
        b.int("rate_limit_rpm", 1, 10);
        let ManageError::Validation(f) = b.finish().unwrap_err() else {
            panic!()
        };
        assert_eq!(f.len(), 3);
        assert!(f.contains_key("extra"));
    }

    #[test]
    fn names_refuse_control_and_invisible_format_characters() {
        for bad in [
            "a\u{200B}b",
            "a\u{200C}b",
            "a\u{200D}b",
            "a\u{2060}b",
            "\u{FEFF}ab",
            "a\u{202E}b",
            "a\u{2066}b",
            "a\u{2069}b",
            "a\u{00AD}b",
            "a\u{E0041}b",
            "a\u{0007}b",
            "a\nb",
            "a\u{0085}b",
        ] {
            let json = serde_json::json!({ "name": bad }).to_string();
            let mut b = Body::parse(json.as_bytes()).unwrap();
            assert_eq!(b.required_name("name", 100), None, "{bad:?}");
            let ManageError::Validation(f) = b.finish().unwrap_err() else {
                panic!()
            };
            assert!(f.contains_key("name"), "{bad:?}");
        }
        let mut b = Body::parse("{\"name\":\"caf\u{e9} \u{4e2d}\u{6587}-1\"}".as_bytes()).unwrap();
        assert!(b.required_name("name", 100).is_some());
        assert!(b.finish().is_ok());
    }

    #[test]
    fn tri_state() {
        let mut b = Body::parse(br#"{"a":null,"b":"x"}"#).unwrap();
        assert_eq!(b.string("a", 5), Field::Null);
        assert_eq!(b.string("b", 5), Field::Value("x".into()));
        assert_eq!(b.string("c", 5), Field::Absent);
        assert!(b.finish().is_ok());
    }

    #[test]
    fn syntax_errors_are_invalid_json() {
        assert!(matches!(
            Body::parse(b"{nope"),
            Err(ManageError::InvalidJson(_))
        ));
        assert!(matches!(
            Body::parse(b"[1]"),
            Err(ManageError::Validation(_))
        ));
        assert!(Body::parse(b"").is_ok());
        assert!(matches!(
            Body::parse(br#"{"name":"a","name":"b"}"#),
            Err(ManageError::InvalidJson(_))
        ));
        assert!(matches!(
            Body::parse(br#"{"x":[{"k":1,"k":2}]}"#),
            Err(ManageError::InvalidJson(_))
        ));
        let mut b = Body::parse(br#"{"a":[1,-2,3.5,"s",true,null,{"b":{}}],"c":"d"}"#).unwrap();
        assert_eq!(
            b.map.remove("a"),
            Some(serde_json::json!([1, -2, 3.5, "s", true, null, {"b": {}}]))
        );
    }

    #[test]
    fn cidrs_accept_bare_addresses() {
        assert_eq!(parse_cidr("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(parse_cidr("10.0.0.9/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_cidr("nope").is_none());
    }
}
