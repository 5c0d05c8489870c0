//! The job graph: what a job function builds, what the runtime plans.
//!
//! Nodes are operators with their parallelism, uid, typed input gates and
//! typed output ports (port 0 is the main output, the others are side
//! outputs). Types are erased behind two small traits: a [`StreamType`] per
//! port knows how to make channels, exchanges and task heads for its record
//! type, and a builder per node knows how to instantiate the operator for one
//! subtask. The runtime never needs to name a record type.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::element::{Data, Discard, FanOut, Output};
use crate::error::{Error, Result};
use crate::exec::{
    ExchangeOutput, KeyHasher, OneInputHead, Partitioner, SubtaskInfo, TaskInput, Tx,
};
use crate::function::{ErasedOutput, SideOutputs};

/// A value whose type only its producer and consumer know.
pub type Erased = Box<dyn Any + Send>;

fn cast<X: 'static>(value: Erased, what: &str) -> Result<X> {
    value
        .downcast::<X>()
        .map(|b| *b)
        .map_err(|_| Error::Graph(format!("type mismatch while wiring {what}")))
}

/// How an edge distributes records.
#[derive(Clone)]
pub enum Partition {
    /// Subtask i to subtask i; falls back to rebalance when parallelism differs.
    Forward,
    /// Round robin over all receivers.
    Rebalance,
    /// Round robin over a local subset of receivers.
    Rescale,
    /// Every record to every receiver.
    Broadcast,
    /// By key group; holds a [`KeyHasher`] of the edge's record type.
    Hash(Arc<dyn Any + Send + Sync>),
}

impl Partition {
    pub fn name(&self) -> &'static str {
        match self {
            Partition::Forward => "FORWARD",
            Partition::Rebalance => "REBALANCE",
            Partition::Rescale => "RESCALE",
            Partition::Broadcast => "BROADCAST",
            Partition::Hash(_) => "HASH",
        }
    }
}

/// An input edge of a node.
#[derive(Clone)]
pub struct Edge {
    pub from: usize,
    pub port: usize,
    pub partition: Partition,
}

/// Sizes an exchange needs to pick receivers.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeShape {
    pub sender_index: usize,
    pub sender_parallelism: usize,
    pub receiver_parallelism: usize,
    pub receiver_max_parallelism: usize,
}

/// What the runtime can do with a port's record type.
pub trait StreamType: Send + Sync {
    fn type_name(&self) -> &'static str;
    /// A bounded channel: `(Tx<T>, Rx<T>)`.
    fn channel(&self, capacity: usize) -> (Erased, Erased);
    /// An output writing into the receivers' channels (`senders` are `Tx<T>`).
    fn exchange(
        &self,
        channel: u32,
        senders: &[Erased],
        partition: &Partition,
        shape: ExchangeShape,
        metrics: Arc<crate::exec::TaskMetrics>,
    ) -> Result<Erased>;
    /// One output feeding all of `outputs` (each a `Box<dyn Output<T>>`).
    fn fan_out(&self, outputs: Vec<Erased>) -> Result<Erased>;
    fn discard(&self) -> Erased;
    fn side_output(&self, output: Erased) -> Result<Box<dyn ErasedOutput>>;
    fn one_input_head(
        &self,
        rx: Erased,
        channels: usize,
        chain: Erased,
        snapshots: crate::checkpoint::SnapshotBuffer,
        metrics: Arc<crate::exec::TaskMetrics>,
    ) -> Result<Box<dyn TaskInput>>;
    /// Encodes what arrives on `rx` (an `Rx<T>`) for a remote receiver.
    fn encoder(&self, rx: Erased) -> Result<Box<dyn crate::wire::BatchEncoder>>;
    /// Decodes remote batches into a clone of `tx` (a `Tx<T>`).
    fn decoder(&self, tx: &Erased) -> Result<Box<dyn crate::wire::BatchDecoder>>;
}

/// The [`StreamType`] of `T`.
pub struct TypeOf<T>(PhantomData<fn() -> T>);

impl<T: Data> TypeOf<T> {
    pub fn arc() -> Arc<dyn StreamType> {
        Arc::new(TypeOf::<T>(PhantomData))
    }
}

fn rescale_targets(shape: ExchangeShape) -> Vec<usize> {
    let (i, up, down) = (
        shape.sender_index,
        shape.sender_parallelism.max(1),
        shape.receiver_parallelism.max(1),
    );
    if down >= up {
        (i * down / up..((i + 1) * down / up).max(i * down / up + 1)).collect()
    } else {
        vec![i * down / up]
    }
}

impl<T: Data> StreamType for TypeOf<T> {
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }

    fn channel(&self, capacity: usize) -> (Erased, Erased) {
        let (tx, rx) = crossbeam_channel::bounded::<crate::exec::Batch<T>>(capacity);
        (Box::new(tx), Box::new(rx))
    }

    fn exchange(
        &self,
        channel: u32,
        senders: &[Erased],
        partition: &Partition,
        shape: ExchangeShape,
        metrics: Arc<crate::exec::TaskMetrics>,
    ) -> Result<Erased> {
        let senders: Vec<Tx<T>> = senders
            .iter()
            .map(|s| {
                s.downcast_ref::<Tx<T>>()
                    .cloned()
                    .ok_or_else(|| Error::Graph("type mismatch in exchange".into()))
            })
            .collect::<Result<_>>()?;
        let n = senders.len();
        let partitioner = match partition {
            Partition::Forward if n == shape.sender_parallelism => {
                Partitioner::Forward(shape.sender_index)
            }
            Partition::Forward | Partition::Rebalance => Partitioner::RoundRobin {
                targets: (0..n).collect(),
                next: shape.sender_index % n.max(1),
            },
            Partition::Rescale => Partitioner::RoundRobin {
                targets: rescale_targets(shape),
                next: 0,
            },
            Partition::Broadcast => Partitioner::Broadcast,
            Partition::Hash(hasher) => Partitioner::Hash {
                key_hash: hasher
                    .downcast_ref::<KeyHasher<T>>()
                    .cloned()
                    .ok_or_else(|| Error::Graph("key hasher of another type".into()))?,
                max_parallelism: shape.receiver_max_parallelism,
                parallelism: shape.receiver_parallelism,
            },
        };
        let out: Box<dyn Output<T>> =
            Box::new(ExchangeOutput::new(channel, senders, partitioner, metrics));
        Ok(Box::new(out))
    }

    fn fan_out(&self, outputs: Vec<Erased>) -> Result<Erased> {
        let mut targets: Vec<Box<dyn Output<T>>> = outputs
            .into_iter()
            .map(|o| cast::<Box<dyn Output<T>>>(o, "a fan-out"))
            .collect::<Result<_>>()?;
        let out: Box<dyn Output<T>> = match targets.len() {
            0 => Box::new(Discard),
            1 => targets.remove(0),
            _ => Box::new(FanOut { targets }),
        };
        Ok(Box::new(out))
    }

    fn discard(&self) -> Erased {
        let out: Box<dyn Output<T>> = Box::new(Discard);
        Box::new(out)
    }

    fn side_output(&self, output: Erased) -> Result<Box<dyn ErasedOutput>> {
        Ok(Box::new(cast::<Box<dyn Output<T>>>(
            output,
            "a side output",
        )?))
    }

    fn one_input_head(
        &self,
        rx: Erased,
        channels: usize,
        chain: Erased,
        snapshots: crate::checkpoint::SnapshotBuffer,
        metrics: Arc<crate::exec::TaskMetrics>,
    ) -> Result<Box<dyn TaskInput>> {
        let rx = cast::<crate::exec::Rx<T>>(rx, "an input gate")?;
        let chain = cast::<Box<dyn Output<T>>>(chain, "a chain head")?;
        Ok(Box::new(OneInputHead::new(
            rx, channels, chain, snapshots, metrics,
        )))
    }

    fn encoder(&self, rx: Erased) -> Result<Box<dyn crate::wire::BatchEncoder>> {
        let rx = cast::<crate::exec::Rx<T>>(rx, "a remote exchange")?;
        Ok(Box::new(crate::wire::ChannelEncoder(rx)))
    }

    fn decoder(&self, tx: &Erased) -> Result<Box<dyn crate::wire::BatchDecoder>> {
        let tx = tx
            .downcast_ref::<Tx<T>>()
            .cloned()
            .ok_or_else(|| Error::Graph("type mismatch in a remote exchange".into()))?;
        Ok(Box::new(crate::wire::ChannelDecoder(tx)))
    }
}

/// Instantiates a source subtask: `chain` is its `Box<dyn Output<T>>`.
pub trait BuildSource: Send + Sync {
    fn build(&self, info: &SubtaskInfo, chain: Erased) -> Result<Box<dyn TaskInput>>;
}

/// Instantiates a one-input operator for a subtask, returning its input
/// (`Box<dyn Output<In>>`) given its main output (`Box<dyn Output<Out>>`).
pub trait BuildOneInput: Send + Sync {
    fn build(&self, info: &SubtaskInfo, main: Erased, side: SideOutputs) -> Result<Erased>;
}

/// Instantiates a two-input operator with its two gates (`Rx<A>`, `Rx<B>`).
pub trait BuildTwoInput: Send + Sync {
    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        info: &SubtaskInfo,
        rx1: Erased,
        channels1: usize,
        rx2: Erased,
        channels2: usize,
        main: Erased,
        side: SideOutputs,
    ) -> Result<Box<dyn TaskInput>>;
}

/// A typed one-input builder from a closure.
pub(crate) struct OneInputFn<I, O> {
    #[allow(clippy::type_complexity)]
    pub make: Box<
        dyn Fn(&SubtaskInfo, Box<dyn Output<O>>, SideOutputs) -> Result<Box<dyn Output<I>>>
            + Send
            + Sync,
    >,
}

impl<I: Data, O: Data> BuildOneInput for OneInputFn<I, O> {
    fn build(&self, info: &SubtaskInfo, main: Erased, side: SideOutputs) -> Result<Erased> {
        let main = cast::<Box<dyn Output<O>>>(main, &info.task_name)?;
        let input: Box<dyn Output<I>> = (self.make)(info, main, side)?;
        Ok(Box::new(input))
    }
}

/// What kind of operator a node is.
#[derive(Clone)]
pub enum NodeKind {
    Source(Arc<dyn BuildSource>),
    OneInput(Arc<dyn BuildOneInput>),
    TwoInput(Arc<dyn BuildTwoInput>),
}

/// An output port: the main output or a named side output.
#[derive(Clone)]
pub struct Port {
    pub tag: Option<String>,
    pub ty: Arc<dyn StreamType>,
}

/// One operator of the job.
#[derive(Clone)]
pub struct Node {
    pub id: usize,
    pub name: String,
    pub uid: Option<String>,
    pub parallelism: Option<usize>,
    pub max_parallelism: Option<usize>,
    /// Input gates; a gate with several edges is a union.
    pub inputs: Vec<Vec<Edge>>,
    pub ports: Vec<Port>,
    pub kind: NodeKind,
    /// Whether this node may run in the same task as its single input.
    pub chainable: bool,
}

impl Node {
    /// The stable identity used to map state back on restore.
    pub fn uid(&self) -> String {
        self.uid
            .clone()
            .unwrap_or_else(|| format!("{}-{}", slug(&self.name), self.id))
    }
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The whole job as built by its job function.
#[derive(Clone, Default)]
pub struct JobGraph {
    pub name: String,
    pub nodes: Vec<Node>,
    /// `parallelism.default`.
    pub default_parallelism: usize,
    /// `pipeline.max-parallelism`, if set.
    pub max_parallelism: Option<usize>,
    /// Mistakes found while building (reported before running).
    pub problems: Vec<String>,
}

impl JobGraph {
    pub fn parallelism_of(&self, node: &Node) -> usize {
        node.parallelism.unwrap_or(self.default_parallelism).max(1)
    }

    pub fn max_parallelism_of(&self, node: &Node) -> usize {
        node.max_parallelism
            .or(self.max_parallelism)
            .unwrap_or_else(|| {
                rill_state::key_group::default_max_parallelism(self.parallelism_of(node))
            })
            .max(self.parallelism_of(node))
    }

    /// Checks what can be checked before running.
    pub fn validate(&self) -> Result<()> {
        if let Some(p) = self.problems.first() {
            return Err(Error::Graph(p.clone()));
        }
        if self.nodes.is_empty() {
            return Err(Error::Graph("the job defines no operators".into()));
        }
        let mut uids = std::collections::HashSet::new();
        for node in &self.nodes {
            if !uids.insert(node.uid()) {
                return Err(Error::Graph(format!(
                    "operator uid '{}' is used twice",
                    node.uid()
                )));
            }
            if let Some(max) = node.max_parallelism.or(self.max_parallelism) {
                if self.parallelism_of(node) > max {
                    return Err(Error::Graph(format!(
                        "operator '{}' has parallelism {} above its max parallelism {max}",
                        node.name,
                        self.parallelism_of(node)
                    )));
                }
            }
        }
        Ok(())
    }

    /// A one-line-per-operator description (for `rill plan` and logs).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let inputs: Vec<String> = n
                .inputs
                .iter()
                .flatten()
                .map(|e| format!("{}<-{}", e.partition.name(), self.nodes[e.from].name))
                .collect();
            s.push_str(&format!(
                "{} [{}] p={} uid={} {}\n",
                n.name,
                n.ports[0].ty.type_name(),
                self.parallelism_of(n),
                n.uid(),
                inputs.join(", ")
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescale_spreads_senders_over_local_receivers() {
        let shape = |i, up, down| ExchangeShape {
            sender_index: i,
            sender_parallelism: up,
            receiver_parallelism: down,
            receiver_max_parallelism: 128,
        };
        assert_eq!(rescale_targets(shape(0, 2, 4)), vec![0, 1]);
        assert_eq!(rescale_targets(shape(1, 2, 4)), vec![2, 3]);
        assert_eq!(rescale_targets(shape(3, 4, 2)), vec![1]);
        assert_eq!(rescale_targets(shape(2, 3, 4)), vec![2, 3]);
    }
}
