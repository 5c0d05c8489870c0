//! Running word counts.
//!
//! `rill run wordcount [--input FILE | --socket HOST:PORT] [--output FILE]`
//!
//! Reads text (a file, a socket, or a built-in verse), splits it into
//! lower-case words, and emits `word,count` every time a word's count changes.

use rill::prelude::*;

const TEXT: &str = "To be, or not to be, that is the question:\n\
Whether 'tis nobler in the mind to suffer\n\
The slings and arrows of outrageous fortune,\n\
Or to take arms against a sea of troubles\n\
And by opposing end them.";

pub fn wordcount(env: &mut StreamEnv, args: &JobArgs) -> rill::api::Result<()> {
    crate::only_known(args, &["input", "socket", "output"])?;
    let lines = match (args.get("input"), args.get("socket")) {
        (Some(path), _) => env
            .from_source(
                TextFileSource::lines(path),
                WatermarkStrategy::no_watermarks(),
                "lines",
            )
            .set_parallelism(1),
        (None, Some(addr)) => env
            .from_source(
                SocketTextSource::new(addr),
                WatermarkStrategy::no_watermarks(),
                "socket",
            )
            .set_parallelism(1),
        (None, None) => env.from_collection(TEXT.lines().map(String::from).collect()),
    };
    let counts = lines
        .flat_map(|line: String| {
            line.split(|c: char| !c.is_alphanumeric() && c != '\'')
                .filter(|w| !w.is_empty())
                .map(|w| (w.to_lowercase(), 1u64))
                .collect::<Vec<_>>()
        })
        .name("Tokenizer")
        .key_by(|(word, _): &(String, u64)| word.clone())
        .reduce(|(w, a), (_, b)| (w, a + b))
        .uid("counts");
    let format = |(w, c): &(String, u64)| format!("{w},{c}");
    match args.get("output") {
        Some(path) => counts
            .sink_to(TextFileSink::new(path, format), "output")
            .set_parallelism(1),
        None => counts.sink_to(PrintSink::with_format(format), "print"),
    };
    Ok(())
}
