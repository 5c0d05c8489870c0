//! `bench-window`: the workload of `rill bench window` as a catalogue entry,
//! so the same query can be timed on a cluster of JobManager and
//! TaskManager processes as well as in one process.
//!
//! `rill run bench-window --events 20000000 --keys 10000 --parallelism 2`

use rill::api::{JobArgs, Result, StreamEnv};

/// Generated bids, keyed 10 s tumbling windows with COUNT and SUM, into a
/// discarding sink.
pub fn bench_window(env: &mut StreamEnv, args: &JobArgs) -> Result<()> {
    crate::only_known(args, &["events", "keys"])?;
    let events = args.parse_or("events", 20_000_000u64)?;
    let keys = args.parse_or("keys", 10_000u64)?;
    rill::bench::window_job(env, events, keys);
    Ok(())
}
