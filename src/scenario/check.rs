//! The output checks of a scenario, I/O-free: each sink's lines as a multiset
//! against the failure-free reference (exactly once: equal; at least once: every
//! reference line at least as often) or against an expected file.

use std::collections::BTreeMap;

/// Each sink's output lines (any order).
pub type Outputs = BTreeMap<String, Vec<String>>;

/// How many examples of missing or extra lines a failure quotes.
const EXAMPLES: usize = 3;

fn counts(lines: &[String]) -> BTreeMap<&str, i64> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(l.as_str()).or_insert(0) += 1;
    }
    m
}

/// The difference of one sink's lines: (line, expected count − actual count).
fn difference<'a>(expected: &'a [String], actual: &'a [String]) -> Vec<(&'a str, i64)> {
    let mut diff = counts(expected);
    for (line, n) in counts(actual) {
        *diff.entry(line).or_insert(0) -= n;
    }
    diff.into_iter().filter(|(_, d)| *d != 0).collect()
}

fn quote(lines: &[(&str, i64)]) -> String {
    lines
        .iter()
        .take(EXAMPLES)
        .map(|(l, d)| {
            let l: String = l.chars().take(120).collect();
            if d.abs() > 1 {
                format!("`{l}` ×{}", d.abs())
            } else {
                format!("`{l}`")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Describes what `actual` lacks (and, unless `extra_ok`, has too much of)
/// against `expected`, for one sink; `None` when it passes.
fn compare_sink(
    sink: &str,
    expected: &[String],
    actual: &[String],
    extra_ok: bool,
) -> Option<String> {
    let diff = difference(expected, actual);
    let missing: Vec<_> = diff.iter().filter(|(_, d)| *d > 0).copied().collect();
    let extra: Vec<_> = diff.iter().filter(|(_, d)| *d < 0).copied().collect();
    let missing_n: i64 = missing.iter().map(|(_, d)| d).sum();
    let extra_n: i64 = -extra.iter().map(|(_, d)| d).sum::<i64>();
    let mut problems = Vec::new();
    if missing_n > 0 {
        problems.push(format!(
            "{missing_n} lines missing (e.g. {})",
            quote(&missing)
        ));
    }
    if extra_n > 0 && !extra_ok {
        problems.push(format!(
            "{extra_n} lines too many (duplicates or unexpected; e.g. {})",
            quote(&extra)
        ));
    }
    (!problems.is_empty()).then(|| {
        format!(
            "sink `{sink}`: {} ({} lines expected, {} written)",
            problems.join("; "),
            expected.len(),
            actual.len()
        )
    })
}

fn compare(expected: &Outputs, actual: &Outputs, extra_ok: bool) -> Result<(), String> {
    let empty = Vec::new();
    let mut failures = Vec::new();
    for sink in expected
        .keys()
        .chain(actual.keys().filter(|k| !expected.contains_key(*k)))
    {
        let e = expected.get(sink).unwrap_or(&empty);
        let a = actual.get(sink).unwrap_or(&empty);
        failures.extend(compare_sink(sink, e, a, extra_ok));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// Every sink wrote exactly the reference's lines, each as often.
pub fn exactly_once(reference: &Outputs, actual: &Outputs) -> Result<(), String> {
    compare(reference, actual, false)
}

/// Nothing of the reference is lost; repeats are allowed.
pub fn at_least_once(reference: &Outputs, actual: &Outputs) -> Result<(), String> {
    compare(reference, actual, true)
}

/// One sink wrote exactly these lines.
pub fn equals_lines(sink: &str, expected: &[String], actual: &[String]) -> Result<(), String> {
    compare_sink(sink, expected, actual, false).map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn outputs(lines: &[&str]) -> Outputs {
        Outputs::from([(
            "out".to_string(),
            lines.iter().map(|l| l.to_string()).collect(),
        )])
    }

    #[test]
    fn order_does_not_matter_but_every_copy_does() {
        let reference = outputs(&["a", "b", "b"]);
        assert_eq!(exactly_once(&reference, &outputs(&["b", "a", "b"])), Ok(()));

        let e = exactly_once(&reference, &outputs(&["a", "b", "b", "b"])).unwrap_err();
        assert!(e.contains("1 lines too many"), "{e}");
        assert!(at_least_once(&reference, &outputs(&["a", "b", "b", "b"])).is_ok());

        let e = exactly_once(&reference, &outputs(&["a", "b"])).unwrap_err();
        assert!(e.contains("1 lines missing (e.g. `b`)"), "{e}");
        let e = at_least_once(&reference, &outputs(&["a", "b", "c"])).unwrap_err();
        assert!(e.contains("1 lines missing"), "{e}");
    }

    #[test]
    fn a_sink_that_wrote_nothing_or_was_not_expected_fails() {
        let reference = outputs(&["a"]);
        let e = exactly_once(&reference, &Outputs::new()).unwrap_err();
        assert!(e.contains("sink `out`: 1 lines missing"), "{e}");
        let mut more = outputs(&["a"]);
        more.insert("other".into(), vec!["x".into()]);
        let e = exactly_once(&reference, &more).unwrap_err();
        assert!(e.contains("sink `other`: 1 lines too many"), "{e}");
    }

    proptest! {
        #[test]
        fn a_permutation_passes_and_any_change_fails(
            lines in proptest::collection::vec("[a-d]{1,2}", 1..40),
            seed in any::<u64>(),
            drop in any::<prop::sample::Index>(),
        ) {
            let mut shuffled = lines.clone();
            let n = shuffled.len();
            shuffled.rotate_left((seed as usize) % n);
            let reference = Outputs::from([("s".to_string(), lines.clone())]);
            prop_assert!(exactly_once(&reference, &Outputs::from([("s".to_string(), shuffled.clone())])).is_ok());

            let mut lost = shuffled.clone();
            lost.remove(drop.index(n));
            prop_assert!(exactly_once(&reference, &Outputs::from([("s".to_string(), lost.clone())])).is_err());
            prop_assert!(at_least_once(&reference, &Outputs::from([("s".to_string(), lost)])).is_err());

            let mut repeated = shuffled;
            repeated.push(lines[drop.index(n)].clone());
            prop_assert!(exactly_once(&reference, &Outputs::from([("s".to_string(), repeated.clone())])).is_err());
            prop_assert!(at_least_once(&reference, &Outputs::from([("s".to_string(), repeated)])).is_ok());
        }
    }
}
