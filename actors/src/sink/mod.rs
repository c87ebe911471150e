//! Sinks with delivery guarantees: the exactly-once file sink's protocol
//! ([`two_phase`]), its file operations ([`part_files`]) and the sink itself
//! ([`file_sink`]), driven through the `Sink` two-phase commit hooks.

pub mod file_sink;
pub mod part_files;
pub mod two_phase;

/// The old subtasks (of `old_parallelism`) whose sink states subtask `index` of
/// `parallelism` takes over on restore: every `j` with `j % parallelism == index`.
/// Each old subtask goes to exactly one new one, whatever the two parallelisms.
pub fn inherited_subtasks(
    old_parallelism: u32,
    parallelism: u32,
    index: u32,
) -> impl Iterator<Item = u32> {
    (index..old_parallelism).step_by(parallelism.max(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_old_subtask_is_taken_over_exactly_once() {
        for old in 1..9 {
            for new in 1..9 {
                let mut taken: Vec<u32> = (0..new)
                    .flat_map(|i| inherited_subtasks(old, new, i))
                    .collect();
                taken.sort();
                assert_eq!(taken, (0..old).collect::<Vec<_>>(), "{old} -> {new}");
            }
        }
        assert_eq!(inherited_subtasks(4, 2, 1).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(inherited_subtasks(2, 4, 3).count(), 0);
    }
}
