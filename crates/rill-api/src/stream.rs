//! The fluent DataStream API.
//!
//! Every call adds a node to the environment's [`JobGraph`]; the streams are
//! cheap handles (`node`, `port`) into it. Functions handed to the API must be
//! `Clone`: each parallel subtask gets its own copy, the way Flink gives each
//! subtask its own deserialised instance.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use rill_state::AggregateFunction;

use crate::config::Configuration;
use crate::element::{Data, Key, KeySelector, Output};
use crate::error::Result;
use crate::exec::{KeyHasher, SourceHead, SubtaskInfo};
use crate::function::{Chained, Filter, FlatMap, Map, OutputTag, ProcessFunction, SideOutputs};
use crate::graph::{
    BuildSource, Edge, Erased, JobGraph, Node, NodeKind, OneInputFn, Partition, Port, TypeOf,
};
use crate::keyed::{KeyedProcessFunction, KeyedProcessOperator, RollingAggregate, RollingReduce};
use crate::sink::{Sink, SinkOperator};
use crate::source::SourceFactory;
use crate::time::{TimestampsAndWatermarks, WatermarkStrategy};
use crate::window::{
    AggregateWindow, ProcessWindow, ReduceWindow, Trigger, WindowAssigner, WindowFunction,
    WindowOperator, WindowOutput,
};

type Graph = Rc<RefCell<JobGraph>>;

/// The environment a job function builds its graph in.
pub struct StreamEnv {
    graph: Graph,
    config: Configuration,
}

impl StreamEnv {
    pub fn new(job_name: impl Into<String>, config: Configuration) -> Result<Self> {
        let graph = JobGraph {
            name: job_name.into(),
            default_parallelism: config.parallelism()?,
            max_parallelism: config.max_parallelism()?,
            ..JobGraph::default()
        };
        Ok(Self {
            graph: Rc::new(RefCell::new(graph)),
            config,
        })
    }

    pub fn config(&self) -> &Configuration {
        &self.config
    }

    /// `parallelism.default` for operators that do not set their own.
    pub fn set_parallelism(&mut self, parallelism: usize) {
        self.graph.borrow_mut().default_parallelism = parallelism.max(1);
    }

    pub fn parallelism(&self) -> usize {
        self.graph.borrow().default_parallelism
    }

    pub fn set_max_parallelism(&mut self, max_parallelism: usize) {
        self.graph.borrow_mut().max_parallelism = Some(max_parallelism.max(1));
    }

    /// Adds a source; `strategy` assigns timestamps and watermarks inside the
    /// source task, as Flink's `fromSource` does.
    pub fn from_source<T: Data>(
        &self,
        factory: impl SourceFactory<T>,
        strategy: WatermarkStrategy<T>,
        name: &str,
    ) -> DataStream<T> {
        let needs_strategy = strategy.out_of_orderness.is_some() || strategy.timestamps.is_some();
        let build = Arc::new(SourceBuild {
            name: name.to_string(),
            factory,
            strategy: needs_strategy.then_some(strategy),
            _t: PhantomData,
        });
        let node = add_node(
            &self.graph,
            name,
            Vec::new(),
            TypeOf::<T>::arc(),
            NodeKind::Source(build),
            false,
        );
        DataStream::new(self.graph.clone(), node)
    }

    /// A small in-memory source with parallelism 1.
    pub fn from_collection<T: Data + Sync>(&self, items: Vec<T>) -> DataStream<T> {
        self.from_source(
            crate::source::CollectionSource::new(items),
            WatermarkStrategy::no_watermarks(),
            "Collection Source",
        )
        .set_parallelism(1)
    }

    /// The graph built so far.
    pub fn graph(&self) -> JobGraph {
        self.graph.borrow().clone()
    }
}

struct SourceBuild<T, S> {
    name: String,
    factory: S,
    strategy: Option<WatermarkStrategy<T>>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Data, S: SourceFactory<T>> BuildSource for SourceBuild<T, S> {
    fn build(&self, info: &SubtaskInfo, chain: Erased) -> Result<Box<dyn crate::exec::TaskInput>> {
        let chain = chain
            .downcast::<Box<dyn Output<T>>>()
            .map_err(|_| crate::Error::Graph("source output type".into()))?;
        let chain: Box<dyn Output<T>> = match &self.strategy {
            Some(strategy) => Box::new(
                TimestampsAndWatermarks::new(strategy.clone(), *chain)
                    .checkpointed(info.with_uid(format!("{}#watermarks", info.uid)))?,
            ),
            None => *chain,
        };
        let source = self.factory.create(info.index, info.parallelism)?;
        Ok(Box::new(SourceHead::new(
            info.clone(),
            self.name.clone(),
            source,
            chain,
        )?))
    }
}

fn add_node(
    graph: &Graph,
    name: &str,
    inputs: Vec<Vec<Edge>>,
    ty: Arc<dyn crate::graph::StreamType>,
    kind: NodeKind,
    chainable: bool,
) -> usize {
    let mut g = graph.borrow_mut();
    let id = g.nodes.len();
    g.nodes.push(Node {
        id,
        name: name.to_string(),
        uid: None,
        parallelism: None,
        max_parallelism: None,
        inputs,
        ports: vec![Port { tag: None, ty }],
        kind,
        chainable,
    });
    id
}

/// How the next consumer of a stream receives it.
enum Partitioning<T> {
    Forward,
    Rebalance,
    Rescale,
    Broadcast,
    Hash(KeyHasher<T>),
}

impl<T: Data> Partitioning<T> {
    fn to_graph(&self) -> Partition {
        match self {
            Partitioning::Forward => Partition::Forward,
            Partitioning::Rebalance => Partition::Rebalance,
            Partitioning::Rescale => Partition::Rescale,
            Partitioning::Broadcast => Partition::Broadcast,
            Partitioning::Hash(h) => Partition::Hash(Arc::new(h.clone())),
        }
    }
}

impl<T> Clone for Partitioning<T> {
    fn clone(&self) -> Self {
        match self {
            Partitioning::Forward => Partitioning::Forward,
            Partitioning::Rebalance => Partitioning::Rebalance,
            Partitioning::Rescale => Partitioning::Rescale,
            Partitioning::Broadcast => Partitioning::Broadcast,
            Partitioning::Hash(h) => Partitioning::Hash(h.clone()),
        }
    }
}

/// A stream of `T` records.
pub struct DataStream<T> {
    graph: Graph,
    /// `(node, port)` pairs; more than one after `union`.
    outputs: Vec<(usize, usize)>,
    partitioning: Partitioning<T>,
}

impl<T> Clone for DataStream<T> {
    fn clone(&self) -> Self {
        Self {
            graph: self.graph.clone(),
            outputs: self.outputs.clone(),
            partitioning: self.partitioning.clone(),
        }
    }
}

impl<T: Data> DataStream<T> {
    fn new(graph: Graph, node: usize) -> Self {
        Self {
            graph,
            outputs: vec![(node, 0)],
            partitioning: Partitioning::Forward,
        }
    }

    fn edges(&self) -> Vec<Edge> {
        self.outputs
            .iter()
            .map(|&(from, port)| Edge {
                from,
                port,
                partition: self.partitioning.to_graph(),
            })
            .collect()
    }

    fn node(&self) -> usize {
        self.outputs[0].0
    }

    fn edit(&self, f: impl FnOnce(&mut Node)) {
        if self.outputs.len() == 1 {
            f(&mut self.graph.borrow_mut().nodes[self.node()]);
        }
    }

    /// Adds a one-input operator consuming this stream.
    pub fn transform<O: Data>(
        &self,
        name: &str,
        make: impl Fn(&SubtaskInfo, Box<dyn Output<O>>, SideOutputs) -> Result<Box<dyn Output<T>>>
            + Send
            + Sync
            + 'static,
    ) -> DataStream<O> {
        let build = Arc::new(OneInputFn::<T, O> {
            make: Box::new(make),
        });
        let node = add_node(
            &self.graph,
            name,
            vec![self.edges()],
            TypeOf::<O>::arc(),
            NodeKind::OneInput(build),
            true,
        );
        DataStream::new(self.graph.clone(), node)
    }

    /// Adds an operator running a [`ProcessFunction`].
    pub fn process<O: Data, F>(&self, function: F) -> DataStream<O>
    where
        F: ProcessFunction<T, O> + Clone + Sync,
    {
        self.transform("Process", move |_, out, side| {
            Ok(Box::new(Chained::new(function.clone(), out, side)))
        })
    }

    pub fn map<O: Data, F>(&self, f: F) -> DataStream<O>
    where
        F: FnMut(T) -> O + Clone + Send + Sync + 'static,
    {
        self.transform("Map", move |_, out, side| {
            Ok(Box::new(Chained::new(Map(f.clone()), out, side)))
        })
    }

    pub fn filter<F>(&self, f: F) -> DataStream<T>
    where
        F: FnMut(&T) -> bool + Clone + Send + Sync + 'static,
    {
        self.transform("Filter", move |_, out, side| {
            Ok(Box::new(Chained::new(Filter(f.clone()), out, side)))
        })
    }

    pub fn flat_map<O: Data, I, F>(&self, f: F) -> DataStream<O>
    where
        I: IntoIterator<Item = O>,
        F: FnMut(T) -> I + Clone + Send + Sync + 'static,
    {
        self.transform("FlatMap", move |_, out, side| {
            Ok(Box::new(Chained::new(FlatMap(f.clone()), out, side)))
        })
    }

    /// Replaces timestamps and watermarks from here on.
    pub fn assign_timestamps_and_watermarks(
        &self,
        strategy: WatermarkStrategy<T>,
    ) -> DataStream<T> {
        let parallelism = self.parallelism_hint();
        let stream = self.transform("Timestamps/Watermarks", move |info, out, _| {
            Ok(Box::new(
                TimestampsAndWatermarks::new(strategy.clone(), out).checkpointed(info.clone())?,
            ))
        });
        match parallelism {
            Some(p) => stream.set_parallelism(p),
            None => stream,
        }
    }

    fn parallelism_hint(&self) -> Option<usize> {
        let g = self.graph.borrow();
        g.nodes[self.node()].parallelism
    }

    /// Partitions by key: all records of a key go to the same subtask.
    pub fn key_by<K: Key, F>(&self, key_of: F) -> KeyedStream<K, T>
    where
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        let key_of: KeySelector<T, K> = Arc::new(key_of);
        let for_hash = key_of.clone();
        let hasher: KeyHasher<T> = Arc::new(move |v| rill_state::hash_key(&for_hash(v)));
        let mut stream = self.clone();
        stream.partitioning = Partitioning::Hash(hasher);
        KeyedStream { stream, key_of }
    }

    /// Merges streams of the same type.
    pub fn union(&self, others: &[DataStream<T>]) -> DataStream<T> {
        let mut stream = self.clone();
        for o in others {
            stream.outputs.extend(o.outputs.iter().copied());
        }
        stream
    }

    pub fn rebalance(&self) -> DataStream<T> {
        self.repartition(Partitioning::Rebalance)
    }
    pub fn rescale(&self) -> DataStream<T> {
        self.repartition(Partitioning::Rescale)
    }
    pub fn broadcast(&self) -> DataStream<T> {
        self.repartition(Partitioning::Broadcast)
    }
    pub fn forward(&self) -> DataStream<T> {
        self.repartition(Partitioning::Forward)
    }

    fn repartition(&self, p: Partitioning<T>) -> DataStream<T> {
        let mut s = self.clone();
        s.partitioning = p;
        s
    }

    /// Prepares this stream to be connected as broadcast input.
    pub fn broadcast_stream(&self) -> crate::broadcast::BroadcastStream<T> {
        crate::broadcast::BroadcastStream {
            stream: self.broadcast(),
        }
    }

    /// Connects with a broadcast stream (rules, configuration, …).
    pub fn connect<B: Data>(
        &self,
        other: &crate::broadcast::BroadcastStream<B>,
    ) -> crate::broadcast::BroadcastConnectedStream<T, B> {
        crate::broadcast::BroadcastConnectedStream {
            main: self.clone(),
            broadcast: other.stream.clone(),
            key_of: None,
        }
    }

    /// The records an operator emitted to a side output.
    pub fn side_output<S: Data>(&self, tag: &OutputTag<S>) -> DataStream<S> {
        let node = self.node();
        let port = {
            let mut g = self.graph.borrow_mut();
            let ports = &mut g.nodes[node].ports;
            match ports
                .iter()
                .position(|p| p.tag.as_deref() == Some(tag.name()))
            {
                Some(p) => p,
                None => {
                    ports.push(Port {
                        tag: Some(tag.name().to_string()),
                        ty: TypeOf::<S>::arc(),
                    });
                    ports.len() - 1
                }
            }
        };
        DataStream {
            graph: self.graph.clone(),
            outputs: vec![(node, port)],
            partitioning: Partitioning::Forward,
        }
    }

    /// Writes the stream to a sink.
    pub fn sink_to(&self, sink: impl Sink<T>, name: &str) -> DataStream<T> {
        let sink = Arc::new(sink);
        self.transform::<T>(name, move |info, _out, _| {
            let writer = sink.writer(info.index, info.parallelism)?;
            Ok(Box::new(SinkOperator::new(writer, info)?))
        })
    }

    /// Runs a closure per record at the end of the stream (tests, debugging).
    pub fn for_each<F>(&self, f: F) -> DataStream<T>
    where
        F: FnMut(T, crate::Timestamp) + Clone + Send + Sync + 'static,
    {
        self.transform::<T>("ForEach", move |info, _out, _| {
            Ok(Box::new(SinkOperator::new(Box::new(f.clone()), info)?))
        })
    }

    pub fn set_parallelism(self, parallelism: usize) -> Self {
        self.edit(|n| n.parallelism = Some(parallelism.max(1)));
        self
    }

    pub fn set_max_parallelism(self, max_parallelism: usize) -> Self {
        self.edit(|n| n.max_parallelism = Some(max_parallelism.max(1)));
        self
    }

    /// Stable operator identity for state on restore.
    pub fn uid(self, uid: &str) -> Self {
        self.edit(|n| n.uid = Some(uid.to_string()));
        self
    }

    pub fn name(self, name: &str) -> Self {
        self.edit(|n| n.name = name.to_string());
        self
    }

    /// Starts a new task here instead of chaining to the operator before.
    pub fn start_new_chain(self) -> Self {
        self.edit(|n| n.chainable = false);
        self
    }
}

/// A stream partitioned by key.
pub struct KeyedStream<K, T> {
    stream: DataStream<T>,
    key_of: KeySelector<T, K>,
}

impl<K, T> Clone for KeyedStream<K, T> {
    fn clone(&self) -> Self {
        Self {
            stream: self.stream.clone(),
            key_of: self.key_of.clone(),
        }
    }
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// Runs a [`KeyedProcessFunction`] (state and timers per key).
    pub fn process<O: Data, F>(&self, function: F) -> DataStream<O>
    where
        F: KeyedProcessFunction<K, T, O> + Clone + Sync,
    {
        let key_of = self.key_of.clone();
        self.stream
            .transform("KeyedProcess", move |info, out, side| {
                let key_of = key_of.clone();
                Ok(Box::new(
                    KeyedProcessOperator::new(function.clone(), move |v: &T| key_of(v), out, side)
                        .checkpointed(info)?,
                ))
            })
    }

    /// Rolling reduce: emits the reduced value per key after every record.
    pub fn reduce<F>(&self, reduce: F) -> DataStream<T>
    where
        F: FnMut(T, T) -> T + Clone + Send + Sync + 'static,
    {
        self.process(RollingReduce::new(reduce)).name("Reduce")
    }

    /// Rolling aggregation: emits the current result per key after every record.
    pub fn aggregate<A>(&self, agg: A) -> DataStream<A::Out>
    where
        A: AggregateFunction<T>,
        A::Out: Data,
    {
        self.process(RollingAggregate::new(agg)).name("Aggregate")
    }

    /// Groups each key's records into windows.
    pub fn window<A: WindowAssigner<T>>(
        &self,
        assigner: A,
    ) -> WindowedStream<K, T, A, A::DefaultTrigger> {
        WindowedStream {
            trigger: assigner.default_trigger(),
            keyed: self.clone(),
            assigner,
            allowed_lateness: 0,
            late: None,
        }
    }

    /// Connects with a broadcast stream; the function gets keyed state too.
    pub fn connect<B: Data>(
        &self,
        other: &crate::broadcast::BroadcastStream<B>,
    ) -> crate::broadcast::BroadcastConnectedStream<T, B, K> {
        crate::broadcast::BroadcastConnectedStream {
            main: self.stream.clone(),
            broadcast: other.stream.clone(),
            key_of: Some(self.key_of.clone()),
        }
    }
}

/// A keyed stream grouped into windows, ready for a window function.
pub struct WindowedStream<K, T, A, Tr> {
    keyed: KeyedStream<K, T>,
    assigner: A,
    trigger: Tr,
    allowed_lateness: i64,
    late: Option<OutputTag<T>>,
}

impl<K, T, A, Tr> WindowedStream<K, T, A, Tr>
where
    K: Key,
    T: Data,
    A: WindowAssigner<T>,
    Tr: Trigger<T, A::W>,
{
    /// Replaces the assigner's default trigger.
    pub fn trigger<Tr2: Trigger<T, A::W>>(self, trigger: Tr2) -> WindowedStream<K, T, A, Tr2> {
        WindowedStream {
            keyed: self.keyed,
            assigner: self.assigner,
            trigger,
            allowed_lateness: self.allowed_lateness,
            late: self.late,
        }
    }

    /// Keep windows this long past their end; late elements re-fire them.
    pub fn allowed_lateness(mut self, lateness_ms: i64) -> Self {
        self.allowed_lateness = lateness_ms.max(0);
        self
    }

    /// Elements too late for all their windows go to this side output
    /// (read it with `side_output` on the window's result stream).
    pub fn side_output_late_data(mut self, tag: &OutputTag<T>) -> Self {
        self.late = Some(tag.clone());
        self
    }

    /// Runs any [`WindowFunction`].
    pub fn apply<F: WindowFunction<K, T, A::W>>(
        self,
        name: &str,
        function: F,
    ) -> DataStream<F::Out> {
        if self.assigner.is_merging() && !self.trigger.can_merge() {
            self.keyed.stream.graph.borrow_mut().problems.push(format!(
                "window '{name}': the trigger cannot be used with merging (session) windows"
            ));
        }
        let key_of = self.keyed.key_of.clone();
        let (assigner, trigger, lateness, late) = (
            self.assigner,
            self.trigger,
            self.allowed_lateness,
            self.late,
        );
        self.keyed.stream.transform(name, move |info, out, side| {
            let key_of = key_of.clone();
            Ok(Box::new(
                WindowOperator::new(
                    assigner.clone(),
                    trigger.clone(),
                    function.clone(),
                    move |v: &T| key_of(v),
                    lateness,
                    late.clone(),
                    out,
                    side,
                )
                .checkpointed(info)?,
            ))
        })
    }

    /// Incremental reduce per window.
    pub fn reduce<F>(self, reduce: F) -> DataStream<T>
    where
        F: Fn(&T, &T) -> T + Clone + Send + Sync + 'static,
    {
        self.apply("Window(Reduce)", ReduceWindow::new(reduce))
    }

    /// Incremental aggregation per window; emits the result.
    pub fn aggregate<Ag>(self, agg: Ag) -> DataStream<Ag::Out>
    where
        Ag: AggregateFunction<T>,
        Ag::Out: Data,
    {
        self.apply(
            "Window(Aggregate)",
            AggregateWindow::new(
                agg,
                |_: &K, _: &A::W, r: Ag::Out, out: &mut WindowOutput<'_, Ag::Out>| out.emit(r),
            ),
        )
    }

    /// Incremental aggregation per window, finished with key and window at hand.
    pub fn aggregate_with<Ag, O, P>(self, agg: Ag, finish: P) -> DataStream<O>
    where
        Ag: AggregateFunction<T>,
        O: Data,
        P: Fn(&K, &A::W, Ag::Out, &mut WindowOutput<'_, O>) + Clone + Send + Sync + 'static,
    {
        self.apply("Window(Aggregate)", AggregateWindow::new(agg, finish))
    }

    /// A function over all elements of a window.
    pub fn process<O, P>(self, process: P) -> DataStream<O>
    where
        O: Data,
        P: Fn(&K, &A::W, &[T], &mut WindowOutput<'_, O>) + Clone + Send + Sync + 'static,
    {
        self.apply("Window(Process)", ProcessWindow::new(process))
    }
}

impl<T: Data> DataStream<T> {
    /// Adds a two-input node fed by this stream (input 1) and `other` (input 2).
    pub(crate) fn add_two_input<B: Data, O: Data>(
        &self,
        name: &str,
        other: &DataStream<B>,
        port: Port,
        kind: NodeKind,
    ) -> DataStream<O> {
        let node = add_node(
            &self.graph,
            name,
            vec![self.edges(), other.edges()],
            port.ty,
            kind,
            false,
        );
        DataStream::new(self.graph.clone(), node)
    }
}
