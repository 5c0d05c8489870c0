//! The incremental aggregation contract shared by aggregating state and windows.

/// Flink's `AggregateFunction`: fold inputs into an accumulator, merge two
/// accumulators (needed by merging windows such as sessions), and read a result.
pub trait AggregateFunction<In>: Clone + Send + Sync + 'static {
    /// Per-key (or per-window) running value.
    type Acc: Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static;
    /// What the aggregation produces.
    type Out;

    fn create_accumulator(&self) -> Self::Acc;
    fn add(&self, value: In, acc: &mut Self::Acc);
    fn result(&self, acc: &Self::Acc) -> Self::Out;
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
}
