//! What a window computes: incremental (reduce, aggregate) or over all
//! elements (process). All three are one [`WindowFunction`]: an accumulator
//! that elements are added to, that merges for sessions, and that is turned
//! into output when the window fires.

use std::marker::PhantomData;

use serde::{de::DeserializeOwned, Serialize};

use crate::element::{Data, Output};
use crate::time::Timestamp;
use rill_state::AggregateFunction;

/// Emits a window's results (timestamped with the window's max timestamp).
pub struct WindowOutput<'a, O> {
    pub(crate) out: &'a mut dyn Output<O>,
    pub(crate) timestamp: Timestamp,
}

impl<O> WindowOutput<'_, O> {
    pub fn emit(&mut self, value: O) {
        self.out.record(value, self.timestamp);
    }
}

/// A window's accumulator and how it becomes output.
pub trait WindowFunction<K, T, W>: Clone + Send + Sync + 'static {
    type Acc: Clone + Send + Serialize + DeserializeOwned + 'static;
    type Out: Data;

    fn create(&self) -> Self::Acc;
    fn add(&self, acc: &mut Self::Acc, value: T);
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    fn emit(&self, key: &K, window: &W, acc: &Self::Acc, out: &mut WindowOutput<'_, Self::Out>);
}

/// `reduce`: the window's elements folded pairwise.
pub struct ReduceWindow<T, F> {
    reduce: F,
    _t: PhantomData<fn(T)>,
}

impl<T, F: Clone> Clone for ReduceWindow<T, F> {
    fn clone(&self) -> Self {
        Self::new(self.reduce.clone())
    }
}

impl<T, F> ReduceWindow<T, F> {
    pub fn new(reduce: F) -> Self {
        Self {
            reduce,
            _t: PhantomData,
        }
    }
}

impl<K, T, W, F> WindowFunction<K, T, W> for ReduceWindow<T, F>
where
    T: Data,
    F: Fn(&T, &T) -> T + Clone + Send + Sync + 'static,
{
    type Acc = Option<T>;
    type Out = T;

    fn create(&self) -> Option<T> {
        None
    }
    #[inline]
    fn add(&self, acc: &mut Option<T>, value: T) {
        *acc = Some(match acc.take() {
            Some(a) => (self.reduce)(&a, &value),
            None => value,
        });
    }
    fn merge(&self, acc: &mut Option<T>, other: Option<T>) {
        if let Some(o) = other {
            *acc = Some(match acc.take() {
                Some(a) => (self.reduce)(&a, &o),
                None => o,
            });
        }
    }
    fn emit(&self, _: &K, _: &W, acc: &Option<T>, out: &mut WindowOutput<'_, T>) {
        if let Some(v) = acc {
            out.emit(v.clone());
        }
    }
}

/// `aggregate`: an [`AggregateFunction`] per window, its result passed to a
/// finishing function `(key, window, result, out)`.
pub struct AggregateWindow<A, P, O> {
    agg: A,
    finish: P,
    _o: PhantomData<fn() -> O>,
}

impl<A: Clone, P: Clone, O> Clone for AggregateWindow<A, P, O> {
    fn clone(&self) -> Self {
        Self::new(self.agg.clone(), self.finish.clone())
    }
}

impl<A, P, O> AggregateWindow<A, P, O> {
    pub fn new(agg: A, finish: P) -> Self {
        Self {
            agg,
            finish,
            _o: PhantomData,
        }
    }
}

impl<K, T, W, A, P, O> WindowFunction<K, T, W> for AggregateWindow<A, P, O>
where
    A: AggregateFunction<T>,
    P: Fn(&K, &W, A::Out, &mut WindowOutput<'_, O>) + Clone + Send + Sync + 'static,
    O: Data,
{
    type Acc = A::Acc;
    type Out = O;

    fn create(&self) -> A::Acc {
        self.agg.create_accumulator()
    }
    #[inline]
    fn add(&self, acc: &mut A::Acc, value: T) {
        self.agg.add(value, acc)
    }
    fn merge(&self, acc: &mut A::Acc, other: A::Acc) {
        self.agg.merge(acc, other)
    }
    fn emit(&self, key: &K, window: &W, acc: &A::Acc, out: &mut WindowOutput<'_, O>) {
        (self.finish)(key, window, self.agg.result(acc), out)
    }
}

/// `process`: all of the window's elements at once.
pub struct ProcessWindow<T, P, O> {
    process: P,
    _t: PhantomData<fn(T) -> O>,
}

impl<T, P: Clone, O> Clone for ProcessWindow<T, P, O> {
    fn clone(&self) -> Self {
        Self::new(self.process.clone())
    }
}

impl<T, P, O> ProcessWindow<T, P, O> {
    pub fn new(process: P) -> Self {
        Self {
            process,
            _t: PhantomData,
        }
    }
}

impl<K, T, W, P, O> WindowFunction<K, T, W> for ProcessWindow<T, P, O>
where
    T: Data,
    O: Data,
    P: Fn(&K, &W, &[T], &mut WindowOutput<'_, O>) + Clone + Send + Sync + 'static,
{
    type Acc = Vec<T>;
    type Out = O;

    fn create(&self) -> Vec<T> {
        Vec::new()
    }
    fn add(&self, acc: &mut Vec<T>, value: T) {
        acc.push(value)
    }
    fn merge(&self, acc: &mut Vec<T>, other: Vec<T>) {
        acc.extend(other)
    }
    fn emit(&self, key: &K, window: &W, acc: &Vec<T>, out: &mut WindowOutput<'_, O>) {
        (self.process)(key, window, acc, out)
    }
}
