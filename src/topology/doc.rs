//! The topology document as a tree of values that remember where they came from (a
//! byte range of the file or a `--set` override), and a reader that pulls typed
//! settings out of a table while tracking which keys were used, so every unknown key
//! is reported with the closest known one.

use super::error::{Origin, Problem};
use toml::de::{DeTable, DeValue};

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Val>),
    Table(Vec<(Key, Val)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub at: Origin,
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Val {
    pub kind: Kind,
    pub at: Origin,
}

impl Val {
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime(_) => "a date-time",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }

    pub fn as_table(&self) -> Option<&[(Key, Val)]> {
        match &self.kind {
            Kind::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Val> {
        self.as_table()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }
}

/// Parses TOML text into a [`Val`] table (entries in source order).
pub fn parse(text: &str) -> Result<Val, Problem> {
    let table = DeTable::parse(text).map_err(|e| {
        let at = e.span().map_or(Origin::Nowhere, Origin::File);
        let msg = e.message().trim_end().replace('\n', "; ");
        Problem::new(&at, format!("TOML syntax error: {msg}"))
            .fix("correct the TOML syntax (strings need quotes, tables are [name], arrays of tables [[name]])")
    })?;
    let span = table.span();
    Ok(convert_table(table.get_ref(), span))
}

/// Parses the value of a `--set key=value` argument: a TOML value if it is one
/// (`4`, `true`, `"x"`, `["a", "b"]`), otherwise the text as a string.
pub fn parse_override_value(text: &str, index: usize) -> Val {
    let origin = Origin::Set(index);
    match DeValue::parse(text) {
        Ok(v) => {
            let mut val = convert(v.get_ref(), v.span());
            set_origin(&mut val, &origin);
            val
        }
        Err(_) => Val {
            kind: Kind::Str(text.to_string()),
            at: origin,
        },
    }
}

fn set_origin(v: &mut Val, origin: &Origin) {
    v.at = origin.clone();
    match &mut v.kind {
        Kind::Array(items) => items.iter_mut().for_each(|i| set_origin(i, origin)),
        Kind::Table(entries) => entries.iter_mut().for_each(|(k, v)| {
            k.at = origin.clone();
            set_origin(v, origin)
        }),
        _ => {}
    }
}

fn convert_table(table: &DeTable<'_>, span: std::ops::Range<usize>) -> Val {
    let mut entries: Vec<(Key, Val)> = table
        .iter()
        .map(|(k, v)| {
            (
                Key {
                    name: k.get_ref().to_string(),
                    at: Origin::File(k.span()),
                },
                convert(v.get_ref(), v.span()),
            )
        })
        .collect();
    // The map is sorted by name; the spans give the order of the file.
    entries.sort_by_key(|(k, _)| match &k.at {
        Origin::File(r) => r.start,
        _ => usize::MAX,
    });
    Val {
        kind: Kind::Table(entries),
        at: Origin::File(span),
    }
}

fn convert(v: &DeValue<'_>, span: std::ops::Range<usize>) -> Val {
    let kind = match v {
        DeValue::String(s) => Kind::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Kind::Int(n),
            // Out of range: keep the text so the reader reports a type error.
            Err(_) => Kind::Str(i.as_str().to_string()),
        },
        DeValue::Float(f) => Kind::Float(f.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Kind::Bool(*b),
        DeValue::Datetime(d) => Kind::Datetime(d.to_string()),
        DeValue::Array(a) => {
            Kind::Array(a.iter().map(|i| convert(i.get_ref(), i.span())).collect())
        }
        DeValue::Table(t) => return convert_table(t, span),
    };
    Val {
        kind,
        at: Origin::File(span),
    }
}

/// Sets `path` (e.g. `["fields", "x"]`) inside `table` to `value`, creating tables on
/// the way; the override's origin marks the new key.
pub fn set_path(table: &mut Val, path: &[&str], value: Val) -> Result<(), String> {
    let origin = value.at.clone();
    let Kind::Table(entries) = &mut table.kind else {
        return Err("is not a table".into());
    };
    let (first, rest) = path.split_first().expect("non-empty path");
    let pos = entries.iter().position(|(k, _)| k.name == *first);
    if rest.is_empty() {
        match pos {
            Some(p) => entries[p].1 = value,
            None => entries.push((
                Key {
                    name: first.to_string(),
                    at: origin,
                },
                value,
            )),
        }
        return Ok(());
    }
    let p = match pos {
        Some(p) => p,
        None => {
            entries.push((
                Key {
                    name: first.to_string(),
                    at: origin.clone(),
                },
                Val {
                    kind: Kind::Table(Vec::new()),
                    at: origin,
                },
            ));
            entries.len() - 1
        }
    };
    set_path(&mut entries[p].1, rest, value).map_err(|e| format!("`{first}` {e}"))
}

/// Entries of a table of strings: key, value, where the value was written.
pub type StringTable = Vec<(Key, String, Origin)>;

/// Reads typed settings from one table, remembering which keys were read.
pub struct Reader<'a> {
    /// How messages name the table: `[job]`, ``operator `count` ``.
    pub what: String,
    pub at: &'a Origin,
    entries: &'a [(Key, Val)],
    used: Vec<bool>,
}

/// The expected type of a setting, for messages.
fn wrong_type(what: &str, key: &str, v: &Val, expected: &str, example: &str) -> Problem {
    Problem::new(
        &v.at,
        format!(
            "`{key}` in {what} must be {expected}, found {}",
            v.describe()
        ),
    )
    .fix(format!("write it like `{key} = {example}`"))
}

impl<'a> Reader<'a> {
    pub fn new(what: impl Into<String>, table: &'a Val) -> Result<Reader<'a>, Problem> {
        let what = what.into();
        let entries = table.as_table().ok_or_else(|| {
            Problem::new(
                &table.at,
                format!("{what} must be a table, found {}", table.describe()),
            )
        })?;
        Ok(Reader {
            what,
            at: &table.at,
            entries,
            used: vec![false; entries.len()],
        })
    }

    pub fn get(&mut self, key: &str) -> Option<&'a Val> {
        let entries = self.entries;
        let pos = entries.iter().position(|(k, _)| k.name == key)?;
        self.used[pos] = true;
        Some(&entries[pos].1)
    }

    /// Where a key was written (its name), for messages about its value's meaning.
    pub fn key_at(&self, key: &str) -> Origin {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map_or_else(|| self.at.clone(), |(k, _)| k.at.clone())
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.name == key)
    }

    pub fn string(
        &mut self,
        key: &str,
        example: &str,
    ) -> Result<Option<(String, Origin)>, Problem> {
        match self.get(key) {
            None => Ok(None),
            Some(Val {
                kind: Kind::Str(s),
                at,
            }) => Ok(Some((s.clone(), at.clone()))),
            Some(v) => Err(wrong_type(&self.what, key, v, "a string", example)),
        }
    }

    pub fn required_string(
        &mut self,
        key: &str,
        example: &str,
    ) -> Result<(String, Origin), Problem> {
        match self.string(key, example)? {
            Some(s) => Ok(s),
            None => Err(self.missing(key, example)),
        }
    }

    /// A required key is absent: if an unread key looks like a misspelling of it,
    /// report that key instead.
    pub fn missing(&self, key: &str, example: &str) -> Problem {
        for ((k, _), used) in self.entries.iter().zip(&self.used) {
            if !used && super::closest(&k.name, &[key]).is_some() {
                return Problem::new(&k.at, format!("unknown key `{}` in {}", k.name, self.what))
                    .fix(format!("did you mean `{key}`?"));
            }
        }
        Problem::new(self.at, format!("{} needs `{key}`", self.what))
            .fix(format!("add `{key} = {example}`"))
    }

    pub fn bool(&mut self, key: &str) -> Result<Option<bool>, Problem> {
        match self.get(key) {
            None => Ok(None),
            Some(Val {
                kind: Kind::Bool(b),
                ..
            }) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(&self.what, key, v, "true or false", "true")),
        }
    }

    pub fn int(
        &mut self,
        key: &str,
        min: i64,
        max: i64,
        example: &str,
    ) -> Result<Option<(i64, Origin)>, Problem> {
        match self.get(key) {
            None => Ok(None),
            Some(Val {
                kind: Kind::Int(i),
                at,
            }) => {
                if *i < min || *i > max {
                    let range = if max == i64::MAX {
                        format!("at least {min}")
                    } else {
                        format!("between {min} and {max}")
                    };
                    Err(Problem::new(
                        at,
                        format!("`{key}` in {} must be {range}, found {i}", self.what),
                    )
                    .fix(format!("write it like `{key} = {example}`")))
                } else {
                    Ok(Some((*i, at.clone())))
                }
            }
            Some(v) => Err(wrong_type(&self.what, key, v, "an integer", example)),
        }
    }

    pub fn u32(
        &mut self,
        key: &str,
        min: u32,
        max: u32,
        example: &str,
    ) -> Result<Option<(u32, Origin)>, Problem> {
        Ok(self
            .int(key, i64::from(min), i64::from(max), example)?
            .map(|(i, at)| (i as u32, at)))
    }

    pub fn float(&mut self, key: &str, example: &str) -> Result<Option<(f64, Origin)>, Problem> {
        match self.get(key) {
            None => Ok(None),
            Some(Val {
                kind: Kind::Float(f),
                at,
            }) => Ok(Some((*f, at.clone()))),
            Some(Val {
                kind: Kind::Int(i),
                at,
            }) => Ok(Some((*i as f64, at.clone()))),
            Some(v) => Err(wrong_type(&self.what, key, v, "a number", example)),
        }
    }

    /// A list of strings; a single string is accepted as a list of one.
    pub fn strings(
        &mut self,
        key: &str,
        example: &str,
    ) -> Result<Option<Vec<(String, Origin)>>, Problem> {
        let what = self.what.clone();
        match self.get(key) {
            None => Ok(None),
            Some(Val {
                kind: Kind::Str(s),
                at,
            }) => Ok(Some(vec![(s.clone(), at.clone())])),
            Some(Val {
                kind: Kind::Array(items),
                ..
            }) => items
                .iter()
                .map(|v| match &v.kind {
                    Kind::Str(s) => Ok((s.clone(), v.at.clone())),
                    _ => Err(wrong_type(&what, key, v, "a list of strings", example)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(wrong_type(&what, key, v, "a list of strings", example)),
        }
    }

    /// An inline table of string values: `{ a = "x", b = "y" }`, in source order.
    pub fn string_table(
        &mut self,
        key: &str,
        example: &str,
    ) -> Result<Option<StringTable>, Problem> {
        let what = self.what.clone();
        match self.get(key) {
            None => Ok(None),
            Some(Val {
                kind: Kind::Table(entries),
                ..
            }) => entries
                .iter()
                .map(|(k, v)| match &v.kind {
                    Kind::Str(s) => Ok((k.clone(), s.clone(), v.at.clone())),
                    _ => Err(Problem::new(
                        &v.at,
                        format!(
                            "`{key}.{}` in {what} must be a string, found {}",
                            k.name,
                            v.describe()
                        ),
                    )
                    .fix(format!("write it like `{key} = {example}`"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(wrong_type(&what, key, v, "a table", example)),
        }
    }

    /// Fails on the first key (in file order) that was never read, suggesting the
    /// closest of `known`.
    pub fn finish(self, known: &[&str]) -> Result<(), Problem> {
        for ((k, _), used) in self.entries.iter().zip(&self.used) {
            if !used {
                let fix = match super::closest(&k.name, known) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("the keys of {} are: {}", self.what, known.join(", ")),
                };
                return Err(Problem::new(
                    &k.at,
                    format!("unknown key `{}` in {}", k.name, self.what),
                )
                .fix(fix));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_in_source_order_with_spans() {
        let src = "z = 1\na = 'x'\n[t]\nk = [1, 2]\n";
        let doc = parse(src).unwrap();
        let t = doc.as_table().unwrap();
        assert_eq!(
            t.iter().map(|(k, _)| k.name.as_str()).collect::<Vec<_>>(),
            ["z", "a", "t"]
        );
        assert_eq!(t[1].1.at, Origin::File(10..13));
        assert_eq!(t[1].0.at, Origin::File(6..7));
        assert_eq!(
            doc.get("t").unwrap().get("k").unwrap().kind,
            Kind::Array(vec![
                Val {
                    kind: Kind::Int(1),
                    at: Origin::File(23..24)
                },
                Val {
                    kind: Kind::Int(2),
                    at: Origin::File(26..27)
                },
            ])
        );
    }

    #[test]
    fn syntax_errors_have_a_span() {
        let e = parse("a = 1\nb = \n").unwrap_err();
        assert!(matches!(e.at, Origin::File(ref r) if r.start >= 6), "{e:?}");
        assert!(e.message.starts_with("TOML syntax error"), "{}", e.message);
    }

    #[test]
    fn overrides() {
        let mut doc = parse("[job]\nname = 'a'\n").unwrap();
        let v = parse_override_value("4", 0);
        assert_eq!(v.kind, Kind::Int(4));
        set_path(&mut doc, &["job", "parallelism"], v).unwrap();
        set_path(
            &mut doc,
            &["job", "name"],
            parse_override_value("plain text", 1),
        )
        .unwrap();
        let job = doc.get("job").unwrap();
        assert_eq!(job.get("parallelism").unwrap().at, Origin::Set(0));
        assert_eq!(
            job.get("name").unwrap().kind,
            Kind::Str("plain text".into())
        );
        assert!(set_path(
            &mut doc,
            &["job", "name", "x"],
            parse_override_value("1", 2)
        )
        .is_err());
    }

    #[test]
    fn reader_reports_types_and_unknown_keys() {
        let doc = parse("n = 'x'\nlst = ['a', 1]\nparalelism = 2\nok = 3\n").unwrap();
        let mut r = Reader::new("[job]", &doc).unwrap();
        let e = r.int("n", 1, 10, "4").unwrap_err();
        assert_eq!(e.message, "`n` in [job] must be an integer, found a string");
        assert_eq!(e.fix.as_deref(), Some("write it like `n = 4`"));
        let e = r.strings("lst", "[\"a\"]").unwrap_err();
        assert_eq!(
            e.message,
            "`lst` in [job] must be a list of strings, found an integer"
        );
        let e = r.int("ok", 5, 10, "6").unwrap_err();
        assert_eq!(e.message, "`ok` in [job] must be between 5 and 10, found 3");
        let e = r.finish(&["n", "lst", "ok", "parallelism"]).unwrap_err();
        assert_eq!(e.message, "unknown key `paralelism` in [job]");
        assert_eq!(e.fix.as_deref(), Some("did you mean `parallelism`?"));
    }
}
