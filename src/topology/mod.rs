//! TOML topologies: the file format, its parsing with source positions, validation
//! and building the job graph.
//!
//! `weir run job.toml` runs a topology; `weir validate job.toml` checks it and prints
//! the resolved graph (parallelism, partitioning, chaining). A topology has a `[job]`
//! table and nodes declared as `[[source]]`, `[[operator]]` and `[[sink]]` tables.
//! Every node has an `id` (letters, digits, `_`, `-`; unique) and a `type`; operators
//! and sinks read `input = "ID"` or `inputs = ["A", "B"]` (several inputs are a union;
//! a node read by several nodes fans out). `parallelism` on a node overrides the job's.
//! Relative paths are resolved against the topology file's directory.
//!
//! ```toml
//! [job]
//! name = "wordcount"        # default: the file name
//! parallelism = 2           # default: number of cores
//! max_parallelism = 128     # key groups; upper bound of any parallelism (<= 32768)
//! workers = 0               # worker threads; 0 = one per core
//! batch_size = 1024         # records per batch between subtasks
//! channel_capacity = 4      # batches in flight per channel (credits)
//! linger_ms = 1             # a partly filled batch leaves after this long
//! state_backend = "memory"  # keyed state: "memory" (heap) or "rocksdb" (local disk)
//! state_dir = "state"       # local state directory; default: a temporary one
//!
//! [[source]]
//! id = "lines"
//! type = "file"
//! path = "data/words.txt"
//!
//! [[operator]]
//! id = "words"
//! type = "flat_map"
//! input = "lines"
//! field = "line"
//! mode = "words"
//! lowercase = true
//!
//! [[operator]]
//! id = "by_word"
//! type = "key_by"
//! input = "words"
//! key = ["word"]
//!
//! [[operator]]
//! id = "counts"
//! type = "count"
//! input = "by_word"
//!
//! [[sink]]
//! id = "out"
//! type = "stdout"
//! input = "counts"
//! ```
//!
//! Override any setting from the command line: `--set job.parallelism=4`,
//! `--set lines.path=other.txt`, `--set counts.output=n` (values are TOML values;
//! anything that is not one is taken as a string).
//!
//! ### Checkpoints
//!
//! An optional `[checkpoint]` table makes the job snapshot its keyed state periodically
//! into `dir` (relative to the topology file): `chk-<id>/_metadata`, written last and
//! durably, plus state files; the newest `retain` completed checkpoints are kept, and
//! ids continue across runs. Recovery from them is not there yet.
//!
//! ```toml
//! [checkpoint]
//! dir = "checkpoints"       # required
//! interval_ms = 1000
//! timeout_ms = 60000
//! min_pause_ms = 0
//! max_concurrent = 1
//! tolerable_failures = 0    # consecutive failed checkpoints before the job fails
//! mode = "aligned"          # or "unaligned", "aligned_with_timeout", "at_least_once"
//! alignment_timeout_ms = 100  # aligned_with_timeout only
//! retain = 3
//! ```
//!
//! ### Records
//!
//! Records are named fields with JSON-like values: null, bool, int (i64), float (f64),
//! string. Sinks write them as JSON lines (`{"word":"weir","count":3}`) or CSV.
//!
//! ### Sources
//!
//! | type | keys | records |
//! |---|---|---|
//! | `generator` | `count` (total; absent = unbounded), `rate` (records/s over all subtasks; absent = as fast as possible), `seed` (default 0), `fields` (name → expression; default `{ i = "i" }`), `splits` | the sequence is cut into `splits` splits (record `i` in split `i % splits`; default: max_parallelism), dealt out to the subtasks (fresh: subtask k of p gets splits k, k+p, …, so with p dividing `splits` it emits `i = k, k+p, …`); each field is an expression over `i` and earlier fields; `random_int(lo, hi)` and `random_float()` are seeded per record, so the output is the same at any parallelism |
//! | `file` | `path`, `splits`, `format` (`text`, `csv`, `json`; default from the extension), `field` (text: default `line`), `header` (csv: default true), `columns` (csv names), `delimiter` (csv: default `,`), `schema` (csv/json: `{ name = "string", age = "int" }`; types string, int, float, bool), `on_error`, `dead_letter_path` | bounded; `path` may be a glob (`data/*.csv`: the matches in order); the files are cut into `splits` ranges of whole lines (default: max_parallelism; each file a share by size), fresh subtask k of p reads a contiguous part of them (a CSV header is read from each file) |
//! | `stdin` | as `file` without `path` | parallelism 1; a reader thread fills a bounded channel of 1024 lines |
//!
//! CSV without a schema infers types (empty → null, `true`/`false`, integers, floats,
//! else strings); with a schema, declared fields are converted and checked and other
//! columns stay strings. Blank lines of CSV and JSON input carry no record. With
//! `header = false` and no `columns`, CSV fields are named `c0`, `c1`, …. A quoted
//! CSV field cannot span lines. JSON lines keep nested
//! arrays/objects as their JSON text.
//!
//! **Bad records** (an unparseable line, a missing or mistyped schema field, invalid
//! UTF-8) follow the source's `on_error`:
//! - `fail` (default): the job stops with exit code 1 and `bad record at FILE:LINE: reason`;
//! - `skip`: the record is counted (shown in the run summary) and logged (warnings
//!   rate-limited to one per second per subtask);
//! - `dead_letter`: one JSON line per bad record goes to `dead_letter_path`:
//!
//! ```text
//! {"source":"orders","location":"data/orders.csv:6","reason":"field `quantity` should be an int, found \"x\"","record":"5,bob,widget,x,2.50"}
//! ```
//!
//! ### Operators
//!
//! | type | keys | emits |
//! |---|---|---|
//! | `map` | `select` (fields to keep, in order), `drop` (fields to remove), `set` (name → expression, evaluated on the input record), `rename` (`{ old = "new" }`, applied last) | one record per record |
//! | `filter` | `where` (a predicate expression) | the records for which it is true |
//! | `flat_map` | `field` (a string field), `output` (default `word`), `mode` (`whitespace` default, `words` = runs of letters/digits with inner apostrophes, `separator` with `separator = ","`), `lowercase`, `keep` (keep the other fields) | one record per token |
//! | `key_by` | `key` (one field or a list) | not an operator: the edges to its readers are partitioned by key (key groups of `max_parallelism`); no `parallelism` |
//! | `count` | `output` (default `count`) | `{key fields…, count}` updated for every record |
//! | `sum`, `min`, `max`, `avg` | `field`, `output` (default the type name) | `{key fields…, output}` updated for every record; nulls are ignored; sum of ints stays an int (overflow is an error), avg is a float |
//!
//! `count`/`sum`/`min`/`max`/`avg` must read a `key_by`.
//!
//! ### Sinks
//!
//! | type | keys | writes |
//! |---|---|---|
//! | `stdout` | `format` (`json` default, `csv`) | whole lines under the stdout lock; one CSV header per job |
//! | `file` | `path`, `splits`, `format` (default from the extension: `.csv` → csv, else json) | at parallelism 1 the file `path`, else one file per subtask `stem-INDEX.ext`; created on start, flushed and synced at the end (at-least-once for now; exactly-once arrives with checkpoints) |
//! | `null` | — | nothing (records are still counted) |
//!
//! ### Expressions
//!
//! Used by `filter.where`, `map.set` and `generator.fields`:
//!
//! - literals: `42`, `1_000`, `2.5`, `1e3`, `'text'` or `"text"` (escapes `\\ \' \" \n \t`), `true`, `false`, `null`;
//! - fields: `word`, or any name in backticks: `` `first name` ``;
//! - operators, loosest first: `or` (`||`), `and` (`&&`), `not` (`!`), comparisons
//!   `== (=) != (<>) < <= > >=` (not chained), `+ -`, `* / %`, unary `-`; parentheses;
//! - functions: `lower upper trim len concat contains starts_with ends_with int float
//!   str is_null coalesce abs floor ceil round min max`, and in generators
//!   `random_int(lo, hi)`, `random_float()`.
//!
//! Ints are i64 (overflow is an error); an int meeting a float becomes a float; `/` and
//! `%` on two ints are integer division and remainder (division by zero is an error);
//! `+` also joins two strings. Arithmetic with null gives null; `==`/`!=` compare
//! numbers by value and everything else by kind and content; `<`… with null are false,
//! and between a number and a string are an error. A runtime error (a missing field, a
//! type mismatch) fails the job naming the operator, the subtask and the expression.
//!
//! ### Errors and exit codes
//!
//! A bad topology gets one message with the file, line and column, the offending line
//! with a caret, and the fix; `weir` exits with 2 (also for bad usage and bad `--set`):
//!
//! ```text
//! error: job.toml:3:1: unknown key `paralelism` in [job]
//!   |
//! 3 | paralelism = 2
//!   | ^^^^^^^^^^
//!   fix: did you mean `parallelism`?
//! ```
//!
//! Checked: TOML syntax, unknown keys (with the closest name), wrong types and ranges,
//! unknown or sink inputs, outputs that go nowhere, cycles, duplicate ids, missing input
//! files, parallelism above `max_parallelism`, invalid expressions (pointing into the
//! string), keyed aggregations without a `key_by`, outputs that would overwrite an
//! input or each other, and fields a node names that its input does not carry (where
//! the topology tells which fields flow: generators, text, CSV with a header or
//! `columns`, and everything downstream of them; JSON input is checked per record).
//! A job that fails while running
//! (bad record under `fail`, an operator error) exits with 1:
//!
//! ```text
//! error: job `t` failed: operator ratio (subtask 0) failed: division by zero in `3 / 0`, in `a / b`
//! ```
//!
//! `weir run` prints a summary on stderr (per operator: parallelism, records in/out,
//! rate; bad records skipped or dead-lettered) and, when stderr is a terminal, a
//! progress line with records in/out per second per operator (`--no-progress` turns
//! it off). Logs go to stderr: `--log-level LEVEL`, else `RUST_LOG`, else `info`.

pub mod doc;
pub mod error;

pub use error::{Origin, Problem, TopologyError};

/// The candidate closest to `word` by edit distance, if it is close enough to be a
/// likely typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1) + 1;
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_names() {
        assert_eq!(
            closest("paralelism", &["parallelism", "name"]),
            Some("parallelism")
        );
        assert_eq!(closest("lowr", &["lower", "upper"]), Some("lower"));
        assert_eq!(closest("xyz", &["parallelism", "name"]), None);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }
}
pub mod model;
pub use model::{load, parse_str, Node, NodeKind, Role, Topology};
pub mod build;
pub use build::{build, BuiltJob};
