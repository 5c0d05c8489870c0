//! Stateless functions and the one-input operator trait.
//!
//! [`ProcessFunction`] is the one trait an operator implements: one required
//! method for records and no-op hooks for watermarks, processing time and end
//! of input. `map`, `filter` and `flat_map` are small implementations of it;
//! [`Chained`] adapts any of them into the [`Output`] of the operator before.

use std::any::Any;
use std::marker::PhantomData;

use crate::element::{Data, Output, Signal};
use crate::time::{Timestamp, MIN_WATERMARK};

/// Names a side output of type `T` (Flink's `OutputTag`).
pub struct OutputTag<T> {
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for OutputTag<T> {
    fn clone(&self) -> Self {
        Self::new(self.name.clone())
    }
}

impl<T> OutputTag<T> {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            _t: PhantomData,
        }
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A side output's consumer with its type erased.
pub trait ErasedOutput: Send {
    fn signal(&mut self, signal: Signal);
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: 'static> ErasedOutput for Box<dyn Output<T>> {
    fn signal(&mut self, signal: Signal) {
        Output::signal(&mut **self, signal)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The side outputs of one operator instance, by tag name.
#[derive(Default)]
pub struct SideOutputs {
    outputs: Vec<(String, Box<dyn ErasedOutput>)>,
}

impl SideOutputs {
    pub fn new(outputs: Vec<(String, Box<dyn ErasedOutput>)>) -> Self {
        Self { outputs }
    }

    pub fn emit<T: 'static>(&mut self, tag: &OutputTag<T>, value: T, timestamp: Timestamp) {
        // A tag nobody consumes is dropped, as in Flink.
        if let Some((_, out)) = self.outputs.iter_mut().find(|(n, _)| n == tag.name()) {
            if let Some(out) = out.as_any_mut().downcast_mut::<Box<dyn Output<T>>>() {
                out.record(value, timestamp);
            }
        }
    }

    pub fn signal(&mut self, signal: Signal) {
        for (_, out) in &mut self.outputs {
            out.signal(signal);
        }
    }
}

/// What a function sees while handling one record or callback.
pub struct Context<'a, O> {
    pub(crate) out: &'a mut dyn Output<O>,
    pub(crate) side: &'a mut SideOutputs,
    pub(crate) timestamp: Timestamp,
    pub(crate) watermark: Timestamp,
}

impl<'a, O> Context<'a, O> {
    pub fn new(
        out: &'a mut dyn Output<O>,
        side: &'a mut SideOutputs,
        timestamp: Timestamp,
        watermark: Timestamp,
    ) -> Self {
        Self {
            out,
            side,
            timestamp,
            watermark,
        }
    }

    /// Emits with the timestamp of the record being processed.
    #[inline]
    pub fn emit(&mut self, value: O) {
        self.out.record(value, self.timestamp);
    }

    /// Emits with an explicit timestamp.
    #[inline]
    pub fn emit_at(&mut self, value: O, timestamp: Timestamp) {
        self.out.record(value, timestamp);
    }

    /// Emits to a side output.
    pub fn side<T: 'static>(&mut self, tag: &OutputTag<T>, value: T) {
        self.side.emit(tag, value, self.timestamp);
    }

    /// Timestamp of the current record (or firing timer).
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The operator's current event time.
    pub fn current_watermark(&self) -> Timestamp {
        self.watermark
    }
}

/// A one-input operator: one required method, optional hooks.
pub trait ProcessFunction<I, O>: Send + 'static {
    fn process_element(&mut self, value: I, ctx: &mut Context<'_, O>);

    /// Called when event time advances, before the watermark is forwarded.
    fn on_watermark(&mut self, _watermark: Timestamp, _ctx: &mut Context<'_, O>) {}

    /// Called on every processing-time tick (about every 10 ms).
    fn on_processing_time(&mut self, _now: Timestamp, _ctx: &mut Context<'_, O>) {}

    /// Called once after the last record.
    fn finish(&mut self, _ctx: &mut Context<'_, O>) {}
}

/// `map`: one output per input.
pub struct Map<F>(pub F);
impl<I, O, F: FnMut(I) -> O + Send + 'static> ProcessFunction<I, O> for Map<F> {
    #[inline]
    fn process_element(&mut self, value: I, ctx: &mut Context<'_, O>) {
        ctx.emit((self.0)(value));
    }
}

/// `filter`: keeps the inputs the predicate accepts.
pub struct Filter<F>(pub F);
impl<I, F: FnMut(&I) -> bool + Send + 'static> ProcessFunction<I, I> for Filter<F> {
    #[inline]
    fn process_element(&mut self, value: I, ctx: &mut Context<'_, I>) {
        if (self.0)(&value) {
            ctx.emit(value);
        }
    }
}

/// `flat_map`: any number of outputs per input.
pub struct FlatMap<F>(pub F);
impl<I, O, It, F> ProcessFunction<I, O> for FlatMap<F>
where
    It: IntoIterator<Item = O>,
    F: FnMut(I) -> It + Send + 'static,
{
    #[inline]
    fn process_element(&mut self, value: I, ctx: &mut Context<'_, O>) {
        for v in (self.0)(value) {
            ctx.emit(v);
        }
    }
}

/// A process function given as a closure over `(value, ctx)`.
pub struct ProcessFn<F>(pub F);
impl<I, O, F: FnMut(I, &mut Context<'_, O>) + Send + 'static> ProcessFunction<I, O>
    for ProcessFn<F>
{
    fn process_element(&mut self, value: I, ctx: &mut Context<'_, O>) {
        (self.0)(value, ctx)
    }
}

/// Runs a [`ProcessFunction`] as a link of an operator chain.
pub struct Chained<F, I, O> {
    function: F,
    out: Box<dyn Output<O>>,
    side: SideOutputs,
    watermark: Timestamp,
    _i: PhantomData<fn(I)>,
}

impl<F, I, O> Chained<F, I, O> {
    pub fn new(function: F, out: Box<dyn Output<O>>, side: SideOutputs) -> Self {
        Self {
            function,
            out,
            side,
            watermark: MIN_WATERMARK,
            _i: PhantomData,
        }
    }
}

impl<F: ProcessFunction<I, O>, I: Send + 'static, O: Data> Output<I> for Chained<F, I, O> {
    #[inline]
    fn record(&mut self, value: I, timestamp: Timestamp) {
        let mut ctx = Context::new(&mut *self.out, &mut self.side, timestamp, self.watermark);
        self.function.process_element(value, &mut ctx);
    }

    fn signal(&mut self, signal: Signal) {
        {
            let mut ctx = Context::new(
                &mut *self.out,
                &mut self.side,
                self.watermark,
                self.watermark,
            );
            match signal {
                Signal::Watermark(wm) => {
                    ctx.watermark = wm;
                    ctx.timestamp = wm;
                    self.function.on_watermark(wm, &mut ctx);
                    self.watermark = wm;
                }
                Signal::ProcessingTime(now) => self.function.on_processing_time(now, &mut ctx),
                Signal::EndOfInput => self.function.finish(&mut ctx),
                Signal::Idle(_)
                | Signal::Flush
                | Signal::Barrier(_)
                | Signal::CheckpointComplete(_) => {}
            }
        }
        Output::signal(&mut *self.out, signal);
        self.side.signal(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::SharedVec;

    #[test]
    fn chain_of_flat_map_filter_and_process() {
        let main: SharedVec<String> = Default::default();
        let tail = Chained::new(
            ProcessFn(move |v: i64, ctx: &mut Context<'_, String>| {
                if v % 2 == 0 {
                    ctx.emit(format!("even {v}"));
                }
            }),
            Box::new(main.clone()),
            SideOutputs::default(),
        );
        let tail = Chained::new(
            ProcessFn(|v: i64, ctx: &mut Context<'_, i64>| ctx.emit(v)),
            Box::new(tail),
            SideOutputs::default(),
        );
        let mut head = Chained::new(
            FlatMap(|v: i64| vec![v, v + 1]),
            Box::new(Chained::new(
                Filter(|v: &i64| *v < 4),
                Box::new(tail),
                SideOutputs::default(),
            )),
            SideOutputs::default(),
        );
        for v in 0..4 {
            head.record(v, 10 + v);
        }
        head.signal(Signal::Watermark(99));
        let got: Vec<_> = main.lock().unwrap().records.clone();
        assert_eq!(
            got,
            vec![
                ("even 0".to_string(), 10),
                ("even 2".to_string(), 11),
                ("even 2".to_string(), 12),
            ]
        );
        assert_eq!(main.lock().unwrap().signals, vec![Signal::Watermark(99)]);
    }

    #[test]
    fn side_outputs_receive_records_and_signals() {
        let odd: SharedVec<i64> = Default::default();
        let tag = OutputTag::<i64>::new("odd");
        let side = SideOutputs::new(vec![(
            "odd".to_string(),
            Box::new(Box::new(odd.clone()) as Box<dyn Output<i64>>),
        )]);
        let mut op = Chained::new(
            ProcessFn(move |v: i64, ctx: &mut Context<'_, i64>| {
                if v % 2 == 1 {
                    ctx.side(&tag, v)
                } else {
                    ctx.emit(v)
                }
            }),
            Box::new(crate::element::Discard),
            side,
        );
        for v in 0..5 {
            op.record(v, v);
        }
        op.signal(Signal::EndOfInput);
        let odd = odd.lock().unwrap();
        assert_eq!(odd.records, vec![(1, 1), (3, 3)]);
        assert_eq!(odd.signals, vec![Signal::EndOfInput]);
    }
}
