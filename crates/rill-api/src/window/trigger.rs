//! Triggers decide when a window's contents are emitted and/or purged.
//!
//! A trigger is shared by all windows of an operator; what it must remember
//! per (key, window) lives in its associated `State`, kept by the window
//! operator next to the window contents (and checkpointed with them). Timer
//! requests are collected in the [`TriggerContext`] and applied by the
//! operator, which also deduplicates them per (key, window, time).

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use smallvec::SmallVec;

use super::assigner::Window;
use crate::element::Data;
use crate::keyed::TimeDomain;
use crate::time::Timestamp;

/// What a trigger wants done with its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerResult {
    Continue,
    Fire,
    Purge,
    FireAndPurge,
}

impl TriggerResult {
    pub fn is_fire(self) -> bool {
        matches!(self, TriggerResult::Fire | TriggerResult::FireAndPurge)
    }
    pub fn is_purge(self) -> bool {
        matches!(self, TriggerResult::Purge | TriggerResult::FireAndPurge)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerRequest {
    Register(TimeDomain, Timestamp),
    Delete(TimeDomain, Timestamp),
}

/// What a trigger sees: its per-window state, the clocks, and timers.
pub struct TriggerContext<'a, S> {
    pub state: &'a mut S,
    pub(crate) watermark: Timestamp,
    pub(crate) processing_time: Timestamp,
    pub(crate) timers: &'a mut SmallVec<[TimerRequest; 4]>,
}

impl<S> TriggerContext<'_, S> {
    pub fn current_watermark(&self) -> Timestamp {
        self.watermark
    }
    pub fn current_processing_time(&self) -> Timestamp {
        self.processing_time
    }
    pub fn register_event_time_timer(&mut self, time: Timestamp) {
        self.timers
            .push(TimerRequest::Register(TimeDomain::EventTime, time));
    }
    pub fn delete_event_time_timer(&mut self, time: Timestamp) {
        self.timers
            .push(TimerRequest::Delete(TimeDomain::EventTime, time));
    }
    pub fn register_processing_time_timer(&mut self, time: Timestamp) {
        self.timers
            .push(TimerRequest::Register(TimeDomain::ProcessingTime, time));
    }
    pub fn delete_processing_time_timer(&mut self, time: Timestamp) {
        self.timers
            .push(TimerRequest::Delete(TimeDomain::ProcessingTime, time));
    }
}

/// Decides when windows fire. One required method; the rest are hooks.
pub trait Trigger<T, W>: Clone + Send + Sync + 'static {
    /// Per-(key, window) memory of the trigger.
    type State: Default + Clone + Send + Serialize + DeserializeOwned + 'static;

    fn on_element(
        &self,
        value: &T,
        timestamp: Timestamp,
        window: &W,
        ctx: &mut TriggerContext<'_, Self::State>,
    ) -> TriggerResult;

    fn on_event_time(
        &self,
        _time: Timestamp,
        _window: &W,
        _ctx: &mut TriggerContext<'_, Self::State>,
    ) -> TriggerResult {
        TriggerResult::Continue
    }

    fn on_processing_time(
        &self,
        _time: Timestamp,
        _window: &W,
        _ctx: &mut TriggerContext<'_, Self::State>,
    ) -> TriggerResult {
        TriggerResult::Continue
    }

    /// Whether this trigger can be used with merging (session) windows.
    fn can_merge(&self) -> bool {
        false
    }

    /// Windows were merged into `window`; `ctx.state` starts as the default
    /// and `merged` holds the states of the windows that were merged.
    fn on_merge(
        &self,
        _window: &W,
        _merged: Vec<Self::State>,
        _ctx: &mut TriggerContext<'_, Self::State>,
    ) {
    }

    /// The window is being dropped: delete the timers this trigger set.
    fn clear(&self, _window: &W, _ctx: &mut TriggerContext<'_, Self::State>) {}
}

/// Fires once the watermark passes the window's end, and again for each late
/// element within the allowed lateness (Flink's `EventTimeTrigger`).
#[derive(Debug, Clone, Copy, Default)]
pub struct EventTimeTrigger;

impl<T, W: Window> Trigger<T, W> for EventTimeTrigger {
    type State = ();

    #[inline]
    fn on_element(
        &self,
        _: &T,
        _: Timestamp,
        w: &W,
        ctx: &mut TriggerContext<'_, ()>,
    ) -> TriggerResult {
        if w.max_timestamp() <= ctx.watermark {
            TriggerResult::Fire
        } else {
            ctx.register_event_time_timer(w.max_timestamp());
            TriggerResult::Continue
        }
    }
    fn on_event_time(
        &self,
        time: Timestamp,
        w: &W,
        _: &mut TriggerContext<'_, ()>,
    ) -> TriggerResult {
        if time == w.max_timestamp() {
            TriggerResult::Fire
        } else {
            TriggerResult::Continue
        }
    }
    fn can_merge(&self) -> bool {
        true
    }
    fn on_merge(&self, w: &W, _: Vec<()>, ctx: &mut TriggerContext<'_, ()>) {
        if w.max_timestamp() > ctx.watermark {
            ctx.register_event_time_timer(w.max_timestamp());
        }
    }
    fn clear(&self, w: &W, ctx: &mut TriggerContext<'_, ()>) {
        ctx.delete_event_time_timer(w.max_timestamp());
    }
}

/// Fires when the wall clock passes the window's end.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessingTimeTrigger;

impl<T, W: Window> Trigger<T, W> for ProcessingTimeTrigger {
    type State = ();

    fn on_element(
        &self,
        _: &T,
        _: Timestamp,
        w: &W,
        ctx: &mut TriggerContext<'_, ()>,
    ) -> TriggerResult {
        ctx.register_processing_time_timer(w.max_timestamp());
        TriggerResult::Continue
    }
    fn on_processing_time(
        &self,
        _: Timestamp,
        _: &W,
        _: &mut TriggerContext<'_, ()>,
    ) -> TriggerResult {
        TriggerResult::Fire
    }
    fn can_merge(&self) -> bool {
        true
    }
    fn on_merge(&self, w: &W, _: Vec<()>, ctx: &mut TriggerContext<'_, ()>) {
        if w.max_timestamp() > ctx.processing_time {
            ctx.register_processing_time_timer(w.max_timestamp());
        }
    }
    fn clear(&self, w: &W, ctx: &mut TriggerContext<'_, ()>) {
        ctx.delete_processing_time_timer(w.max_timestamp());
    }
}

/// Fires every `count` elements.
#[derive(Debug, Clone, Copy)]
pub struct CountTrigger {
    count: u64,
}

impl CountTrigger {
    pub fn of(count: u64) -> Self {
        Self {
            count: count.max(1),
        }
    }
}

impl<T, W: Window> Trigger<T, W> for CountTrigger {
    type State = u64;

    fn on_element(
        &self,
        _: &T,
        _: Timestamp,
        _: &W,
        ctx: &mut TriggerContext<'_, u64>,
    ) -> TriggerResult {
        *ctx.state += 1;
        if *ctx.state >= self.count {
            *ctx.state = 0;
            TriggerResult::Fire
        } else {
            TriggerResult::Continue
        }
    }
    fn can_merge(&self) -> bool {
        true
    }
    fn on_merge(&self, _: &W, merged: Vec<u64>, ctx: &mut TriggerContext<'_, u64>) {
        *ctx.state = merged.into_iter().sum();
    }
}

/// Never fires (the default of [`GlobalWindows`](super::GlobalWindows)).
#[derive(Debug, Clone, Copy, Default)]
pub struct NeverTrigger;

impl<T, W: Window> Trigger<T, W> for NeverTrigger {
    type State = ();
    fn on_element(
        &self,
        _: &T,
        _: Timestamp,
        _: &W,
        _: &mut TriggerContext<'_, ()>,
    ) -> TriggerResult {
        TriggerResult::Continue
    }
    fn can_merge(&self) -> bool {
        true
    }
}

/// Turns every firing of the wrapped trigger into fire-and-purge.
#[derive(Debug, Clone, Copy)]
pub struct PurgingTrigger<Tr>(pub Tr);

impl<Tr> PurgingTrigger<Tr> {
    pub fn of(inner: Tr) -> Self {
        Self(inner)
    }
}

fn purging(r: TriggerResult) -> TriggerResult {
    if r.is_fire() {
        TriggerResult::FireAndPurge
    } else {
        r
    }
}

impl<T, W: Window, Tr: Trigger<T, W>> Trigger<T, W> for PurgingTrigger<Tr> {
    type State = Tr::State;

    fn on_element(
        &self,
        v: &T,
        ts: Timestamp,
        w: &W,
        ctx: &mut TriggerContext<'_, Tr::State>,
    ) -> TriggerResult {
        purging(self.0.on_element(v, ts, w, ctx))
    }
    fn on_event_time(
        &self,
        t: Timestamp,
        w: &W,
        ctx: &mut TriggerContext<'_, Tr::State>,
    ) -> TriggerResult {
        purging(self.0.on_event_time(t, w, ctx))
    }
    fn on_processing_time(
        &self,
        t: Timestamp,
        w: &W,
        ctx: &mut TriggerContext<'_, Tr::State>,
    ) -> TriggerResult {
        purging(self.0.on_processing_time(t, w, ctx))
    }
    fn can_merge(&self) -> bool {
        self.0.can_merge()
    }
    fn on_merge(&self, w: &W, merged: Vec<Tr::State>, ctx: &mut TriggerContext<'_, Tr::State>) {
        self.0.on_merge(w, merged, ctx)
    }
    fn clear(&self, w: &W, ctx: &mut TriggerContext<'_, Tr::State>) {
        self.0.clear(w, ctx)
    }
}

/// Early firing: fires every `interval` of event time while the window is
/// open, and at its end (Flink's `ContinuousEventTimeTrigger`).
#[derive(Debug, Clone, Copy)]
pub struct ContinuousEventTimeTrigger {
    interval: i64,
}

impl ContinuousEventTimeTrigger {
    pub fn of(interval_ms: i64) -> Self {
        Self {
            interval: interval_ms.max(1),
        }
    }
}

impl<T, W: Window> Trigger<T, W> for ContinuousEventTimeTrigger {
    /// The next early firing time.
    type State = Option<Timestamp>;

    fn on_element(
        &self,
        _: &T,
        ts: Timestamp,
        w: &W,
        ctx: &mut TriggerContext<'_, Option<Timestamp>>,
    ) -> TriggerResult {
        if w.max_timestamp() <= ctx.watermark {
            return TriggerResult::Fire;
        }
        ctx.register_event_time_timer(w.max_timestamp());
        if ctx.state.is_none() {
            let start = ts - ts.rem_euclid(self.interval);
            let next = start + self.interval;
            *ctx.state = Some(next);
            ctx.register_event_time_timer(next);
        }
        TriggerResult::Continue
    }
    fn on_event_time(
        &self,
        time: Timestamp,
        w: &W,
        ctx: &mut TriggerContext<'_, Option<Timestamp>>,
    ) -> TriggerResult {
        if time == w.max_timestamp() {
            return TriggerResult::Fire;
        }
        if *ctx.state == Some(time) {
            let next = time + self.interval;
            *ctx.state = Some(next);
            ctx.register_event_time_timer(next);
            return TriggerResult::Fire;
        }
        TriggerResult::Continue
    }
    fn can_merge(&self) -> bool {
        true
    }
    fn on_merge(
        &self,
        w: &W,
        merged: Vec<Option<Timestamp>>,
        ctx: &mut TriggerContext<'_, Option<Timestamp>>,
    ) {
        let next = merged.into_iter().flatten().min();
        *ctx.state = next;
        if let Some(next) = next {
            ctx.register_event_time_timer(next);
        }
        if w.max_timestamp() > ctx.watermark {
            ctx.register_event_time_timer(w.max_timestamp());
        }
    }
    fn clear(&self, w: &W, ctx: &mut TriggerContext<'_, Option<Timestamp>>) {
        if let Some(next) = ctx.state.take() {
            ctx.delete_event_time_timer(next);
        }
        ctx.delete_event_time_timer(w.max_timestamp());
    }
}

/// Fires when `delta(last_fired, element)` exceeds a threshold
/// (Flink's `DeltaTrigger`, as used by TopSpeedWindowing).
pub struct DeltaTrigger<T, F> {
    threshold: f64,
    delta: F,
    _t: std::marker::PhantomData<fn(&T)>,
}

impl<T, F: Clone> Clone for DeltaTrigger<T, F> {
    fn clone(&self) -> Self {
        Self {
            threshold: self.threshold,
            delta: self.delta.clone(),
            _t: std::marker::PhantomData,
        }
    }
}

impl<T, F> DeltaTrigger<T, F> {
    pub fn of(threshold: f64, delta: F) -> Self {
        Self {
            threshold,
            delta,
            _t: std::marker::PhantomData,
        }
    }
}

/// The element a [`DeltaTrigger`] compares against.
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "T: Data")]
pub struct LastFired<T>(pub Option<T>);

impl<T> Default for LastFired<T> {
    fn default() -> Self {
        LastFired(None)
    }
}

impl<T, W, F> Trigger<T, W> for DeltaTrigger<T, F>
where
    T: Data,
    W: Window,
    F: Fn(&T, &T) -> f64 + Clone + Send + Sync + 'static,
{
    type State = LastFired<T>;

    fn on_element(
        &self,
        v: &T,
        _: Timestamp,
        _: &W,
        ctx: &mut TriggerContext<'_, LastFired<T>>,
    ) -> TriggerResult {
        match &ctx.state.0 {
            None => {
                ctx.state.0 = Some(v.clone());
                TriggerResult::Continue
            }
            Some(last) if (self.delta)(last, v) > self.threshold => {
                ctx.state.0 = Some(v.clone());
                TriggerResult::Fire
            }
            Some(_) => TriggerResult::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::TimeWindow;

    fn ctx<'a, S>(
        state: &'a mut S,
        timers: &'a mut SmallVec<[TimerRequest; 4]>,
        wm: i64,
    ) -> TriggerContext<'a, S> {
        TriggerContext {
            state,
            watermark: wm,
            processing_time: 0,
            timers,
        }
    }

    #[test]
    fn event_time_trigger_registers_then_fires_late() {
        let w = TimeWindow::new(0, 10);
        let mut timers = SmallVec::new();
        let r = Trigger::<(), _>::on_element(
            &EventTimeTrigger,
            &(),
            3,
            &w,
            &mut ctx(&mut (), &mut timers, 0),
        );
        assert_eq!(r, TriggerResult::Continue);
        assert_eq!(
            timers.as_slice(),
            &[TimerRequest::Register(TimeDomain::EventTime, 9)]
        );
        let r = Trigger::<(), _>::on_element(
            &EventTimeTrigger,
            &(),
            3,
            &w,
            &mut ctx(&mut (), &mut timers, 9),
        );
        assert_eq!(
            r,
            TriggerResult::Fire,
            "a late element within lateness fires at once"
        );
    }

    #[test]
    fn count_trigger_fires_every_n_and_merges() {
        let w = TimeWindow::new(0, 10);
        let mut timers = SmallVec::new();
        let mut n = 0u64;
        let t = CountTrigger::of(3);
        let results: Vec<_> = (0..6)
            .map(|_| Trigger::<(), _>::on_element(&t, &(), 0, &w, &mut ctx(&mut n, &mut timers, 0)))
            .collect();
        assert_eq!(results.iter().filter(|r| r.is_fire()).count(), 2);
        Trigger::<(), _>::on_merge(&t, &w, vec![1, 1], &mut ctx(&mut n, &mut timers, 0));
        assert_eq!(n, 2);
    }

    #[test]
    fn delta_trigger_compares_with_last_firing() {
        let t = DeltaTrigger::of(5.0, |a: &f64, b: &f64| b - a);
        let w = TimeWindow::new(0, 10);
        let mut timers = SmallVec::new();
        let mut s = LastFired::default();
        let fired: Vec<bool> = [1.0, 3.0, 7.0, 9.0, 12.5]
            .iter()
            .map(|v| {
                t.on_element(v, 0, &w, &mut ctx(&mut s, &mut timers, 0))
                    .is_fire()
            })
            .collect();
        assert_eq!(fired, vec![false, false, true, false, true]);
    }
}
