//! TOML topologies: the file format, its parsing with source positions, validation
//! and building the job.

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
