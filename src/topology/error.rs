//! Topology errors: one message that names the file, the line and column, the problem
//! and the fix, with the offending line quoted.

use std::fmt;
use std::ops::Range;

/// Where a setting came from: a byte range of the topology file, or a `--set`
/// override (by its index on the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(Range<usize>),
    Set(usize),
    /// No better place than the file as a whole.
    Nowhere,
}

impl Origin {
    /// The range `offset..offset+len` inside a string value that starts at this
    /// origin (used to point into expressions); falls back to the whole value.
    pub fn inner(&self, source: &str, offset: usize, len: usize) -> Origin {
        match self {
            Origin::File(r) => {
                let raw = source.get(r.clone()).unwrap_or("");
                // Only a literal string ('...') or a basic string without escapes maps
                // one to one onto its value.
                let quote = raw.chars().next();
                let simple = match quote {
                    Some('\'') => !raw.starts_with("'''"),
                    Some('"') => !raw.starts_with("\"\"\"") && !raw.contains('\\'),
                    _ => false,
                };
                if simple {
                    let start = r.start + 1 + offset;
                    let end = (start + len.max(1)).min(r.end.saturating_sub(1).max(start + 1));
                    Origin::File(start..end)
                } else {
                    self.clone()
                }
            }
            other => other.clone(),
        }
    }
}

/// A problem found in a topology, not yet tied to its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: Origin,
    pub message: String,
    pub fix: Option<String>,
}

impl Problem {
    pub fn new(at: &Origin, message: impl Into<String>) -> Problem {
        Problem {
            at: at.clone(),
            message: message.into(),
            fix: None,
        }
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Problem {
        self.fix = Some(fix.into());
        self
    }
}

/// A topology error, rendered for a human: `error: FILE:LINE:COL: problem`, the line
/// with a caret under the problem, and `fix: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    rendered: String,
    /// 1-based line and column, when the problem has a place in the file.
    pub line_col: Option<(usize, usize)>,
    pub message: String,
}

impl TopologyError {
    /// Renders `problem` against the topology file's `path` and text and the `--set`
    /// arguments.
    pub fn render(problem: &Problem, path: &str, source: &str, sets: &[String]) -> TopologyError {
        let mut out = String::new();
        let mut line_col = None;
        match &problem.at {
            Origin::File(range) => {
                let (line, col) = line_col_of(source, range.start);
                line_col = Some((line, col));
                out.push_str(&format!(
                    "error: {path}:{line}:{col}: {}\n",
                    problem.message
                ));
                let text = source.lines().nth(line - 1).unwrap_or("");
                let gutter = line.to_string().len();
                let line_start = range.start - (col_byte_offset(source, range.start));
                let end = range.end.min(line_start + text.len()).max(range.start + 1);
                let width = source
                    .get(range.start..end)
                    .map_or(1, |s| s.chars().count().max(1));
                out.push_str(&format!("{:gutter$} |\n", ""));
                out.push_str(&format!("{line} | {text}\n"));
                out.push_str(&format!(
                    "{:gutter$} | {}{}\n",
                    "",
                    " ".repeat(col - 1),
                    "^".repeat(width)
                ));
            }
            Origin::Set(i) => {
                let arg = sets.get(*i).map_or("", String::as_str);
                out.push_str(&format!(
                    "error: --set {arg}: {} (topology {path})\n",
                    problem.message
                ));
            }
            Origin::Nowhere => {
                out.push_str(&format!("error: {path}: {}\n", problem.message));
            }
        }
        if let Some(fix) = &problem.fix {
            out.push_str(&format!("  fix: {fix}\n"));
        }
        TopologyError {
            rendered: out,
            line_col,
            message: problem.message.clone(),
        }
    }

    /// An error about the file as a whole (unreadable, not UTF-8).
    pub fn whole_file(path: &str, message: String, fix: Option<String>) -> TopologyError {
        let mut rendered = format!("error: {path}: {message}\n");
        if let Some(fix) = fix {
            rendered.push_str(&format!("  fix: {fix}\n"));
        }
        TopologyError {
            rendered,
            line_col: None,
            message,
        }
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rendered.trim_end())
    }
}

impl std::error::Error for TopologyError {}

/// The byte offset of `pos` from the start of its line.
fn col_byte_offset(source: &str, pos: usize) -> usize {
    let pos = pos.min(source.len());
    pos - source[..pos].rfind('\n').map_or(0, |i| i + 1)
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col_of(source: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(source.len());
    while !source.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &source[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = source[line_start..pos].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_column_caret_and_fix() {
        let src = "[job]\nname = \"x\"\nparalelism = 4\n";
        let start = src.find("paralelism").unwrap();
        let p = Problem::new(
            &Origin::File(start..start + 10),
            "unknown key `paralelism` in [job]",
        )
        .fix("did you mean `parallelism`?");
        let e = TopologyError::render(&p, "job.toml", src, &[]);
        assert_eq!(e.line_col, Some((3, 1)));
        assert_eq!(
            e.to_string(),
            "error: job.toml:3:1: unknown key `paralelism` in [job]\n  |\n3 | paralelism = 4\n  | ^^^^^^^^^^\n  fix: did you mean `parallelism`?"
        );
    }

    #[test]
    fn line_col_counts_characters() {
        let src = "a = \"é\"\nb = 1";
        assert_eq!(line_col_of(src, 0), (1, 1));
        assert_eq!(line_col_of(src, src.find('b').unwrap()), (2, 1));
        assert_eq!(line_col_of(src, src.find('"').unwrap() + 3), (1, 7));
    }

    #[test]
    fn inner_points_into_simple_strings_only() {
        let src = "where = 'n > )'\nw2 = \"a\\tb\"";
        let s = src.find('\'').unwrap();
        let o = Origin::File(s..s + 9);
        assert_eq!(o.inner(src, 4, 1), Origin::File(s + 5..s + 6));
        let s2 = src.find('"').unwrap();
        let o2 = Origin::File(s2..src.len());
        assert_eq!(o2.inner(src, 2, 1), o2);
    }

    #[test]
    fn renders_set_overrides() {
        let p = Problem::new(&Origin::Set(1), "`job.parallelism` must be at least 1");
        let e = TopologyError::render(
            &p,
            "a.toml",
            "",
            &["x=1".into(), "job.parallelism=0".into()],
        );
        assert_eq!(
            e.to_string(),
            "error: --set job.parallelism=0: `job.parallelism` must be at least 1 (topology a.toml)"
        );
    }
}
