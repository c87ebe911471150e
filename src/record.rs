//! The dynamic record that TOML topologies move: an ordered list of named fields with
//! JSON-like values.
//!
//! Cloning is cheap: field names and strings are `Arc<str>`, so a clone copies one
//! small vector of (pointer, value) pairs. Records serialize (serde) as a sequence of
//! `(name, value)` pairs with an externally tagged [`Value`], which works in
//! non-self-describing formats (postcard: channel state, savepoints) as well as JSON.
//! The user-facing text formats (JSON lines, CSV) are written and parsed here by hand,
//! with plain JSON values (`{"word":"a","count":3}`), not the serde representation.
//!
//! [`RecordKey`] is the `Hash + Eq` key for `key_by` over one or more fields; floats
//! hash and compare by their bits, so `NaN` is a key like any other.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A field value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(#[serde(with = "arc_str")] Arc<str>),
}

mod arc_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Arc<str>, D::Error> {
        Ok(Arc::from(String::deserialize(de)?))
    }
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Str(Arc::from(s))
    }

    /// The name of this value's type, as used in messages and schemas.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a float if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Total order used by `min`/`max` and comparisons: numbers compare numerically
    /// (ints and floats mixed), strings lexicographically, bools false < true.
    /// Values of different kinds do not compare (`None`).
    pub fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                let (a, b) = (self.as_f64()?, other.as_f64()?);
                a.partial_cmp(&b)
            }
            (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::Null, Value::Null) => Some(Ordering::Equal),
            _ => None,
        }
    }

    /// Equality as seen by the expression language: numbers by value (1 == 1.0),
    /// everything else by kind and content.
    pub fn loose_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                self.compare(other) == Some(Ordering::Equal)
            }
            _ => self == other,
        }
    }

    /// Infer a value from untyped text (CSV without a schema): empty → null,
    /// `true`/`false` → bool, integers → int, other numbers → float, else string.
    pub fn infer(text: &str) -> Value {
        if text.is_empty() {
            return Value::Null;
        }
        match text {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
        let first = text.as_bytes()[0];
        if first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.' {
            if let Ok(i) = text.parse::<i64>() {
                return Value::Int(i);
            }
            if let Ok(f) = text.parse::<f64>() {
                return Value::Float(f);
            }
        }
        Value::str(text)
    }

    /// Writes the value as JSON (non-finite floats become `null`).
    pub fn write_json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(f) => write_float(*f, out, true),
            Value::Str(s) => write_json_str(s, out),
        }
    }

    /// Writes the value as it appears in a CSV cell or a text line (unquoted).
    pub fn write_plain(&self, out: &mut String) {
        match self {
            Value::Null => {}
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(f) => write_float(*f, out, false),
            Value::Str(s) => out.push_str(s),
        }
    }
}

fn write_float(f: f64, out: &mut String, json: bool) {
    if !f.is_finite() {
        if json {
            out.push_str("null");
        } else {
            let _ = write!(out, "{f}");
        }
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        // Keep a ".0" so the value reads back as a float.
        let _ = write!(out, "{f:.1}");
    } else if f.fract() == 0.0 {
        // Large integral floats in exponent form (1e20), not as 21 digits of an int.
        let _ = write!(out, "{f:e}");
    } else {
        let _ = write!(out, "{f}");
    }
}

/// Writes `s` as a JSON string literal.
pub fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl PartialEq for Value {
    /// Exact equality: same kind and content; floats by bits.
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Str(a), Value::Str(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Value::Null => {}
            Value::Bool(b) => b.hash(state),
            Value::Int(i) => i.hash(state),
            Value::Float(f) => f.to_bits().hash(state),
            Value::Str(s) => s.hash(state),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        match self {
            Value::Str(_) => self.write_json(&mut s),
            _ => self.write_plain(&mut s),
        }
        if self.is_null() {
            s.push_str("null");
        }
        f.write_str(&s)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::str(v)
    }
}

/// A record: named fields in order. Names are unique (setting an existing name
/// replaces its value in place).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    fields: Vec<(Arc<str>, Value)>,
}

impl Record {
    pub fn new() -> Record {
        Record { fields: Vec::new() }
    }

    pub fn with_capacity(n: usize) -> Record {
        Record {
            fields: Vec::with_capacity(n),
        }
    }

    /// Builds a record from `(name, value)` pairs (later duplicates replace earlier).
    pub fn from_pairs<N: AsRef<str>, V: Into<Value>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Record {
        let mut r = Record::new();
        for (n, v) in pairs {
            r.set(Arc::from(n.as_ref()), v.into());
        }
        r
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v)
    }

    /// Sets a field, replacing its value if the name exists, appending otherwise.
    pub fn set(&mut self, name: Arc<str>, value: Value) {
        if let Some(slot) = self.fields.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else {
            self.fields.push((name, value));
        }
    }

    /// Appends a field without checking for an existing one (the caller knows the
    /// name is new).
    pub fn push_unchecked(&mut self, name: Arc<str>, value: Value) {
        self.fields.push((name, value));
    }

    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let pos = self.fields.iter().position(|(n, _)| &**n == name)?;
        Some(self.fields.remove(pos).1)
    }

    /// Renames a field in place; returns false if it does not exist.
    pub fn rename(&mut self, from: &str, to: Arc<str>) -> bool {
        if self.get(&to).is_some() && &*to != from {
            self.remove(&to);
        }
        match self.fields.iter_mut().find(|(n, _)| &**n == from) {
            Some(slot) => {
                slot.0 = to;
                true
            }
            None => false,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.fields.iter().map(|(n, v)| (&**n, v))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(n, _)| &**n)
    }

    /// The comma-separated field names, for messages.
    pub fn describe_fields(&self) -> String {
        if self.fields.is_empty() {
            return "no fields".to_string();
        }
        self.names()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One JSON object, without a trailing newline.
    pub fn write_json(&self, out: &mut String) {
        out.push('{');
        for (i, (n, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_str(n, out);
            out.push(':');
            v.write_json(out);
        }
        out.push('}');
    }

    pub fn to_json(&self) -> String {
        let mut s = String::new();
        self.write_json(&mut s);
        s
    }

    /// One CSV row of the values (RFC 4180 quoting), without a trailing newline.
    pub fn write_csv_values(&self, out: &mut String) {
        let mut cell = String::new();
        for (i, (_, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            cell.clear();
            v.write_plain(&mut cell);
            write_csv_cell(&cell, out);
        }
    }

    /// The CSV header row of the field names.
    pub fn write_csv_header(&self, out: &mut String) {
        for (i, (n, _)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_csv_cell(n, out);
        }
    }

    /// Parses one JSON object (a JSON line). Nested arrays and objects are kept as
    /// their compact JSON text in a string field.
    pub fn from_json(line: &str) -> Result<Record, String> {
        let mut de = serde_json::Deserializer::from_str(line);
        let rec = JsonRecord::deserialize(&mut de).map_err(|e| json_error(&e))?;
        de.end().map_err(|e| json_error(&e))?;
        Ok(rec.0)
    }
}

fn json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    // serde_json appends " at line 1 column N": keep just the column, the line is ours.
    match msg.rfind(" at line ") {
        Some(pos) => {
            let tail = &msg[pos..];
            match tail.rfind("column ") {
                Some(c) => format!("invalid JSON: {} (column {})", &msg[..pos], &tail[c + 7..]),
                None => format!("invalid JSON: {}", &msg[..pos]),
            }
        }
        None => format!("invalid JSON: {msg}"),
    }
}

/// Writes a CSV cell, quoting it if it contains a comma, quote or line break.
pub fn write_csv_cell(cell: &str, out: &mut String) {
    if cell.contains([',', '"', '\n', '\r']) {
        out.push('"');
        for c in cell.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(cell);
    }
}

/// Splits one CSV line into cells (RFC 4180 quoting; a quoted cell cannot span
/// lines). Errors name the 1-based column of the problem.
pub fn parse_csv_line(line: &str, delimiter: char) -> Result<Vec<String>, String> {
    let mut cells = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        let mut cell = String::new();
        if let Some(&(start, '"')) = chars.peek() {
            chars.next();
            loop {
                match chars.next() {
                    Some((_, '"')) => {
                        if let Some(&(_, '"')) = chars.peek() {
                            chars.next();
                            cell.push('"');
                        } else {
                            break;
                        }
                    }
                    Some((_, c)) => cell.push(c),
                    None => {
                        return Err(format!(
                            "unterminated quoted CSV field starting at column {}",
                            start + 1
                        ))
                    }
                }
            }
            match chars.next() {
                None => {
                    cells.push(cell);
                    return Ok(cells);
                }
                Some((_, c)) if c == delimiter => cells.push(cell),
                Some((pos, c)) => {
                    return Err(format!(
                        "unexpected `{c}` after a quoted CSV field at column {}",
                        pos + 1
                    ))
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        cells.push(cell);
                        return Ok(cells);
                    }
                    Some((_, c)) if c == delimiter => {
                        cells.push(cell);
                        break;
                    }
                    Some((pos, '"')) => {
                        return Err(format!(
                            "a `\"` inside an unquoted CSV field at column {}",
                            pos + 1
                        ))
                    }
                    Some((_, c)) => cell.push(c),
                }
            }
        }
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut seq = ser.serialize_seq(Some(self.fields.len()))?;
        for (n, v) in &self.fields {
            seq.serialize_element(&(&**n, v))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Record, D::Error> {
        let pairs = Vec::<(String, Value)>::deserialize(de)?;
        let mut r = Record::with_capacity(pairs.len());
        for (n, v) in pairs {
            r.set(Arc::from(n), v);
        }
        Ok(r)
    }
}

/// A JSON object read into a record, keeping the field order of the text.
struct JsonRecord(Record);

impl<'de> Deserialize<'de> for JsonRecord {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<JsonRecord, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonRecord;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<JsonRecord, A::Error> {
                let mut r = Record::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v: JsonValue = map.next_value()?;
                    r.set(Arc::from(k), v.0);
                }
                Ok(JsonRecord(r))
            }
        }
        de.deserialize_map(V)
    }
}

/// A JSON value read into a [`Value`] (nested structures as compact JSON text).
struct JsonValue(Value);

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<JsonValue, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Null))
            }
            fn visit_none<E>(self) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Null))
            }
            fn visit_bool<E>(self, v: bool) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Int(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<JsonValue, E> {
                Ok(JsonValue(match i64::try_from(v) {
                    Ok(i) => Value::Int(i),
                    Err(_) => Value::Float(v as f64),
                }))
            }
            fn visit_f64<E>(self, v: f64) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Float(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::str(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<JsonValue, A::Error> {
                let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(JsonValue(Value::str(&v.to_string())))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<JsonValue, A::Error> {
                let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(JsonValue(Value::str(&v.to_string())))
            }
        }
        de.deserialize_any(V)
    }
}

/// The key of a record for `key_by`: the values of the key fields, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RecordKey {
    /// A key over one field (no allocation beyond the value itself).
    One(Value),
    /// A key over several fields.
    Many(Vec<Value>),
}

impl RecordKey {
    /// Extracts the key over `fields` from a record; the error names the missing field.
    pub fn extract(record: &Record, fields: &[Arc<str>]) -> Result<RecordKey, String> {
        let get = |f: &Arc<str>| {
            record.get(f).cloned().ok_or_else(|| {
                format!(
                    "key field `{f}` is missing from the record (it has {})",
                    record.describe_fields()
                )
            })
        };
        if fields.len() == 1 {
            Ok(RecordKey::One(get(&fields[0])?))
        } else {
            Ok(RecordKey::Many(
                fields.iter().map(get).collect::<Result<_, _>>()?,
            ))
        }
    }

    pub fn values(&self) -> &[Value] {
        match self {
            RecordKey::One(v) => std::slice::from_ref(v),
            RecordKey::Many(vs) => vs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn h<T: Hash>(t: &T) -> u64 {
        let mut s = DefaultHasher::new();
        t.hash(&mut s);
        s.finish()
    }

    #[test]
    fn json_round_trip_keeps_order_and_types() {
        let line = r#"{"b":1,"a":"x\"y","c":2.5,"d":null,"e":true,"f":[1,{"g":2}],"h":3.0}"#;
        let r = Record::from_json(line).unwrap();
        assert_eq!(
            r.names().collect::<Vec<_>>(),
            ["b", "a", "c", "d", "e", "f", "h"]
        );
        assert_eq!(r.get("b"), Some(&Value::Int(1)));
        assert_eq!(r.get("a"), Some(&Value::str("x\"y")));
        assert_eq!(r.get("c"), Some(&Value::Float(2.5)));
        assert_eq!(r.get("f"), Some(&Value::str(r#"[1,{"g":2}]"#)));
        assert_eq!(r.get("h"), Some(&Value::Float(3.0)));
        assert_eq!(
            r.to_json(),
            r#"{"b":1,"a":"x\"y","c":2.5,"d":null,"e":true,"f":"[1,{\"g\":2}]","h":3.0}"#
        );
        let again = Record::from_json(&r.to_json()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn json_errors_are_reported() {
        let e = Record::from_json(r#"{"a":1"#).unwrap_err();
        assert!(e.starts_with("invalid JSON: EOF while parsing"), "{e}");
        assert!(e.contains("column 6"), "{e}");
        assert!(Record::from_json("[1,2]")
            .unwrap_err()
            .contains("expected a JSON object"));
        assert!(Record::from_json(r#"{"a":1} x"#)
            .unwrap_err()
            .contains("trailing"));
    }

    #[test]
    fn serde_round_trip_through_postcard() {
        let r = Record::from_pairs([
            ("s", Value::str("héllo")),
            ("i", Value::Int(-3)),
            ("f", Value::Float(1.5)),
            ("n", Value::Null),
            ("b", Value::Bool(true)),
        ]);
        let bytes = postcard::to_allocvec(&r).unwrap();
        let back: Record = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
        let key = RecordKey::Many(vec![Value::str("a"), Value::Float(f64::NAN)]);
        let kb = postcard::to_allocvec(&key).unwrap();
        let kback: RecordKey = postcard::from_bytes(&kb).unwrap();
        assert_eq!(kback, key);
    }

    #[test]
    fn csv_parse_and_write() {
        assert_eq!(parse_csv_line("a,b,,c", ',').unwrap(), ["a", "b", "", "c"]);
        assert_eq!(
            parse_csv_line(r#""x,y","say ""hi""",z"#, ',').unwrap(),
            ["x,y", r#"say "hi""#, "z"]
        );
        assert_eq!(parse_csv_line("", ',').unwrap(), [""]);
        assert_eq!(parse_csv_line("a;b", ';').unwrap(), ["a", "b"]);
        assert!(parse_csv_line(r#""abc"#, ',')
            .unwrap_err()
            .contains("unterminated"));
        assert!(parse_csv_line(r#""a"b"#, ',')
            .unwrap_err()
            .contains("column 4"));
        assert!(parse_csv_line(r#"a"b"#, ',')
            .unwrap_err()
            .contains("column 2"));

        let r = Record::from_pairs([
            ("name", Value::str("a,b")),
            ("q", Value::str("x\"y")),
            ("n", Value::Int(3)),
            ("z", Value::Null),
        ]);
        let mut out = String::new();
        r.write_csv_header(&mut out);
        out.push('\n');
        r.write_csv_values(&mut out);
        assert_eq!(out, "name,q,n,z\n\"a,b\",\"x\"\"y\",3,");
    }

    #[test]
    fn infer_types() {
        assert_eq!(Value::infer(""), Value::Null);
        assert_eq!(Value::infer("12"), Value::Int(12));
        assert_eq!(Value::infer("-1.5"), Value::Float(-1.5));
        assert_eq!(Value::infer("true"), Value::Bool(true));
        assert_eq!(Value::infer("abc"), Value::str("abc"));
        assert_eq!(Value::infer("1a"), Value::str("1a"));
    }

    #[test]
    fn keys_hash_floats_by_bits() {
        let a = RecordKey::One(Value::Float(f64::NAN));
        assert_eq!(a, a.clone());
        assert_eq!(h(&a), h(&a.clone()));
        assert_ne!(
            RecordKey::One(Value::Float(0.0)),
            RecordKey::One(Value::Float(-0.0))
        );
        assert_ne!(
            RecordKey::One(Value::Int(1)),
            RecordKey::One(Value::Float(1.0))
        );
        let r = Record::from_pairs([("a", Value::Int(1)), ("b", Value::str("x"))]);
        let k = RecordKey::extract(&r, &[Arc::from("b"), Arc::from("a")]).unwrap();
        assert_eq!(k.values(), [Value::str("x"), Value::Int(1)]);
        let e = RecordKey::extract(&r, &[Arc::from("c")]).unwrap_err();
        assert_eq!(
            e,
            "key field `c` is missing from the record (it has `a`, `b`)"
        );
    }

    #[test]
    fn record_set_rename_remove() {
        let mut r = Record::from_pairs([("a", 1i64), ("b", 2i64)]);
        r.set(Arc::from("a"), Value::Int(5));
        assert_eq!(r.names().collect::<Vec<_>>(), ["a", "b"]);
        assert!(r.rename("a", Arc::from("c")));
        assert!(!r.rename("zz", Arc::from("y")));
        assert_eq!(r.to_json(), r#"{"c":5,"b":2}"#);
        assert!(r.rename("c", Arc::from("b")));
        assert_eq!(r.to_json(), r#"{"b":5}"#);
        assert_eq!(r.remove("b"), Some(Value::Int(5)));
        assert!(r.is_empty());
    }

    #[test]
    fn compare_and_loose_eq() {
        assert_eq!(
            Value::Int(1).compare(&Value::Float(1.5)),
            Some(Ordering::Less)
        );
        assert!(Value::Int(1).loose_eq(&Value::Float(1.0)));
        assert!(!Value::Int(1).loose_eq(&Value::str("1")));
        assert_eq!(Value::str("a").compare(&Value::Int(1)), None);
        let mut s = String::new();
        Value::Float(2.0).write_json(&mut s);
        s.push(' ');
        Value::Float(f64::INFINITY).write_json(&mut s);
        assert_eq!(s, "2.0 null");
        let big = Record::from_pairs([("x", Value::Float(1e20)), ("y", Value::Float(-2.5e-7))]);
        assert_eq!(big.to_json(), r#"{"x":1e20,"y":-0.00000025}"#);
        assert_eq!(Record::from_json(&big.to_json()).unwrap(), big);
    }
}
