//! Turning input lines into records: plain text, CSV (with a header or named
//! columns) and JSON lines, optionally checked against a schema.

use crate::record::{parse_csv_line, Record, Value};
use std::sync::Arc;

/// The text format of a file or stdin source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Every line becomes one record with a single string field.
    Text,
    /// Comma-separated values (RFC 4180 quoting, one record per line).
    Csv,
    /// One JSON object per line.
    Json,
}

impl Format {
    pub const NAMES: &'static [&'static str] = &["text", "csv", "json"];

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "text" => Some(Format::Text),
            "csv" => Some(Format::Csv),
            "json" | "jsonl" | "ndjson" => Some(Format::Json),
            _ => None,
        }
    }

    /// The format a file name suggests: `.csv`, `.json`/`.jsonl`/`.ndjson`, else text.
    pub fn from_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Format::Csv,
            Some("json" | "jsonl" | "ndjson") => Format::Json,
            _ => Format::Text,
        }
    }
}

/// The declared type of a schema field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Int,
    Float,
    Bool,
}

impl FieldType {
    pub const NAMES: &'static [&'static str] = &["string", "int", "float", "bool"];

    pub fn parse(s: &str) -> Option<FieldType> {
        match s {
            "string" | "str" => Some(FieldType::String),
            "int" | "integer" => Some(FieldType::Int),
            "float" | "number" => Some(FieldType::Float),
            "bool" | "boolean" => Some(FieldType::Bool),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
        }
    }

    /// Converts CSV text to this type.
    fn parse_text(self, field: &str, text: &str) -> Result<Value, String> {
        let bad = || format!("field `{field}` should be {}, found \"{text}\"", self.an());
        match self {
            FieldType::String => Ok(Value::str(text)),
            FieldType::Int => text.trim().parse().map(Value::Int).map_err(|_| bad()),
            FieldType::Float => text.trim().parse().map(Value::Float).map_err(|_| bad()),
            FieldType::Bool => match text.trim() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(bad()),
            },
        }
    }

    /// Checks (and widens int to float) a JSON value against this type.
    fn check(self, field: &str, v: Value) -> Result<Value, String> {
        match (self, v) {
            (FieldType::String, v @ Value::Str(_)) => Ok(v),
            (FieldType::Int, v @ Value::Int(_)) => Ok(v),
            (FieldType::Float, v @ Value::Float(_)) => Ok(v),
            (FieldType::Float, Value::Int(i)) => Ok(Value::Float(i as f64)),
            (FieldType::Bool, v @ Value::Bool(_)) => Ok(v),
            (_, v) => Err(format!(
                "field `{field}` should be {}, found {} {v}",
                self.an(),
                v.type_name()
            )),
        }
    }

    fn an(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Int => "an int",
            FieldType::Float => "a float",
            FieldType::Bool => "a bool",
        }
    }
}

/// How a source turns lines into records.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeSpec {
    pub format: Format,
    /// Text: the name of the one field (default `line`).
    pub field: Arc<str>,
    /// CSV: the first line names the columns.
    pub header: bool,
    /// CSV: column names (instead of, or overriding, the header).
    pub columns: Option<Vec<Arc<str>>>,
    pub delimiter: char,
    /// CSV/JSON: required fields and their types; a record missing one, or with a
    /// value of another type, is a bad record.
    pub schema: Option<Vec<(Arc<str>, FieldType)>>,
}

impl DecodeSpec {
    pub fn text() -> DecodeSpec {
        DecodeSpec {
            format: Format::Text,
            field: Arc::from("line"),
            header: false,
            columns: None,
            delimiter: ',',
            schema: None,
        }
    }
}

/// A decoder for one stream of lines.
#[derive(Debug, Clone)]
pub struct Decoder {
    spec: Arc<DecodeSpec>,
    columns: Option<Vec<Arc<str>>>,
}

impl Decoder {
    pub fn new(spec: Arc<DecodeSpec>) -> Decoder {
        let columns = spec.columns.clone();
        Decoder { spec, columns }
    }

    /// Whether the first line of the input is a header to hand to [`Decoder::header`].
    pub fn expects_header(&self) -> bool {
        self.spec.format == Format::Csv && self.spec.header
    }

    /// Reads the CSV header line (unless `columns` named them already).
    pub fn header(&mut self, line: &str) -> Result<(), String> {
        let names = parse_csv_line(line.trim_end_matches('\r'), self.spec.delimiter)
            .map_err(|e| format!("bad CSV header: {e}"))?;
        if self.columns.is_none() {
            let mut cols: Vec<Arc<str>> = Vec::with_capacity(names.len());
            for n in names {
                let n = n.trim();
                if cols.iter().any(|c| &**c == n) {
                    return Err(format!("the CSV header names column `{n}` twice"));
                }
                cols.push(Arc::from(n));
            }
            self.columns = Some(cols);
        }
        Ok(())
    }

    /// Whether a line carries no record (blank lines in CSV and JSON input).
    pub fn is_blank(&self, line: &str) -> bool {
        self.spec.format != Format::Text && line.trim().is_empty()
    }

    /// Decodes one line (without its line break).
    pub fn decode(&self, line: &str) -> Result<Record, String> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        match self.spec.format {
            Format::Text => {
                let mut r = Record::with_capacity(1);
                r.push_unchecked(self.spec.field.clone(), Value::str(line));
                Ok(r)
            }
            Format::Csv => self.decode_csv(line),
            Format::Json => {
                let r = Record::from_json(line)?;
                self.apply_schema_json(r)
            }
        }
    }

    fn decode_csv(&self, line: &str) -> Result<Record, String> {
        let cells = parse_csv_line(line, self.spec.delimiter)?;
        let mut r = Record::with_capacity(cells.len());
        match &self.columns {
            Some(cols) => {
                if cells.len() != cols.len() {
                    return Err(format!(
                        "expected {} CSV fields ({}), found {}",
                        cols.len(),
                        cols.iter().map(|c| &**c).collect::<Vec<_>>().join(", "),
                        cells.len()
                    ));
                }
                for (name, cell) in cols.iter().zip(&cells) {
                    let v = match self.schema_type(name) {
                        Some(t) => t.parse_text(name, cell)?,
                        None if self.spec.schema.is_some() => Value::str(cell),
                        None => Value::infer(cell),
                    };
                    r.push_unchecked(name.clone(), v);
                }
            }
            None => {
                for (i, cell) in cells.iter().enumerate() {
                    r.push_unchecked(Arc::from(format!("c{i}")), Value::infer(cell));
                }
            }
        }
        if let Some(schema) = &self.spec.schema {
            for (name, t) in schema {
                if r.get(name).is_none() {
                    return Err(format!("missing field `{name}` ({})", t.name()));
                }
            }
        }
        Ok(r)
    }

    fn schema_type(&self, name: &str) -> Option<FieldType> {
        self.spec
            .schema
            .as_ref()?
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, t)| *t)
    }

    fn apply_schema_json(&self, mut r: Record) -> Result<Record, String> {
        let Some(schema) = &self.spec.schema else {
            return Ok(r);
        };
        for (name, t) in schema {
            let v = r
                .get(name)
                .cloned()
                .ok_or_else(|| format!("missing field `{name}` ({})", t.name()))?;
            let checked = t.check(name, v)?;
            r.set(name.clone(), checked);
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(schema: Option<Vec<(&str, FieldType)>>) -> Decoder {
        Decoder::new(Arc::new(DecodeSpec {
            format: Format::Csv,
            header: true,
            schema: schema.map(|s| s.into_iter().map(|(n, t)| (Arc::from(n), t)).collect()),
            ..DecodeSpec::text()
        }))
    }

    #[test]
    fn text_lines() {
        let d = Decoder::new(Arc::new(DecodeSpec::text()));
        assert_eq!(
            d.decode("hello world\r").unwrap().to_json(),
            r#"{"line":"hello world"}"#
        );
        assert!(!d.is_blank(""));
    }

    #[test]
    fn csv_with_header_infers_types() {
        let mut d = csv(None);
        assert!(d.expects_header());
        d.header("name,age,score\r").unwrap();
        let r = d.decode("ada,36,1.5").unwrap();
        assert_eq!(r.to_json(), r#"{"name":"ada","age":36,"score":1.5}"#);
        assert_eq!(
            d.decode("bob,1").unwrap_err(),
            "expected 3 CSV fields (name, age, score), found 2"
        );
        assert!(d.is_blank("  "));
        let mut dup = csv(None);
        assert!(dup.header("a,a").unwrap_err().contains("twice"));
    }

    #[test]
    fn csv_schema_checks_types() {
        let mut d = csv(Some(vec![
            ("age", FieldType::Int),
            ("name", FieldType::String),
        ]));
        d.header("name,age,zip").unwrap();
        let r = d.decode("ada,36,01234").unwrap();
        // With a schema, undeclared columns stay strings.
        assert_eq!(r.to_json(), r#"{"name":"ada","age":36,"zip":"01234"}"#);
        assert_eq!(
            d.decode("ada,x,1").unwrap_err(),
            "field `age` should be an int, found \"x\""
        );
        let mut d2 = csv(Some(vec![("city", FieldType::String)]));
        d2.header("name").unwrap();
        assert_eq!(
            d2.decode("ada").unwrap_err(),
            "missing field `city` (string)"
        );
    }

    #[test]
    fn csv_without_header_names_columns() {
        let d = Decoder::new(Arc::new(DecodeSpec {
            format: Format::Csv,
            ..DecodeSpec::text()
        }));
        assert_eq!(d.decode("a,2").unwrap().to_json(), r#"{"c0":"a","c1":2}"#);
        let d = Decoder::new(Arc::new(DecodeSpec {
            format: Format::Csv,
            columns: Some(vec![Arc::from("x"), Arc::from("y")]),
            ..DecodeSpec::text()
        }));
        assert_eq!(d.decode("a,2").unwrap().to_json(), r#"{"x":"a","y":2}"#);
    }

    #[test]
    fn json_schema() {
        let d = Decoder::new(Arc::new(DecodeSpec {
            format: Format::Json,
            schema: Some(vec![
                (Arc::from("n"), FieldType::Float),
                (Arc::from("s"), FieldType::String),
            ]),
            ..DecodeSpec::text()
        }));
        assert_eq!(
            d.decode(r#"{"s":"a","n":2}"#).unwrap().to_json(),
            r#"{"s":"a","n":2.0}"#
        );
        assert_eq!(
            d.decode(r#"{"s":"a"}"#).unwrap_err(),
            "missing field `n` (float)"
        );
        assert_eq!(
            d.decode(r#"{"s":1,"n":2}"#).unwrap_err(),
            "field `s` should be a string, found int 1"
        );
        assert!(d.decode("{oops").unwrap_err().starts_with("invalid JSON"));
    }
}
