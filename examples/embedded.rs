//! Embedding weir: a word count over an in-memory text with the typed API, run twice
//! at different parallelism to show the result does not depend on it.
//!
//!     cargo run --release --example embedded

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use weir::{Context, JobConfig, Sink, Source, SourcePoll, StreamJob, SubtaskInfo};

const TEXT: &str = "the weir holds the river back\nthe river rises\nand the weir lets it through";

/// Subtask i of p reads lines i, i+p, i+2p, …
struct Lines {
    lines: Vec<String>,
    next: usize,
    step: usize,
}

impl Lines {
    fn new(info: &SubtaskInfo) -> Self {
        let lines = TEXT.lines().map(str::to_string).collect();
        Lines {
            lines,
            next: info.index as usize,
            step: info.parallelism as usize,
        }
    }
}

impl Source for Lines {
    type Out = String;
    fn poll(&mut self, ctx: &mut Context<'_, String>, max: usize) -> anyhow::Result<SourcePoll> {
        for _ in 0..max {
            let Some(line) = self.lines.get(self.next) else {
                return Ok(SourcePoll::Finished);
            };
            ctx.emit(line.clone());
            self.next += self.step;
        }
        Ok(SourcePoll::Ready)
    }
}

/// Keeps the latest count per word.
struct Totals(Arc<Mutex<BTreeMap<String, u64>>>);

impl Sink for Totals {
    type In = (String, u64);
    fn write(&mut self, (word, count): (String, u64)) -> anyhow::Result<()> {
        self.0.lock().expect("not poisoned").insert(word, count);
        Ok(())
    }
}

fn word_count(parallelism: u32) -> anyhow::Result<BTreeMap<String, u64>> {
    let totals = Arc::new(Mutex::new(BTreeMap::new()));
    let job = StreamJob::new(JobConfig {
        name: "embedded-wordcount".into(),
        parallelism,
        ..JobConfig::default()
    });
    let sink = totals.clone();
    job.source("lines", Lines::new)
        .flat_map("split", |line: String| {
            line.split_whitespace()
                .map(|w| (w.to_string(), 1u64))
                .collect::<Vec<_>>()
        })
        .key_by(|(word, _)| word.clone())
        .reduce("count", |(word, a), (_, b)| (word.clone(), a + b))
        .sink_with_parallelism("totals", 1, move |_| Totals(sink.clone()));
    let report = job.run()?;
    for op in &report.operators {
        eprintln!(
            "{:>8}: {} in, {} out",
            op.name, op.records_in, op.records_out
        );
    }
    let totals = totals.lock().expect("not poisoned").clone();
    Ok(totals)
}

fn main() -> anyhow::Result<()> {
    let one = word_count(1)?;
    let four = word_count(4)?;
    assert_eq!(one, four, "the result does not depend on the parallelism");
    for (word, count) in &one {
        println!("{word} {count}");
    }
    Ok(())
}
