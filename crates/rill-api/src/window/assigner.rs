//! Window types and the assigners that put elements into them.

use std::fmt::Debug;
use std::hash::Hash;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use smallvec::SmallVec;

use super::trigger::{EventTimeTrigger, NeverTrigger, ProcessingTimeTrigger, Trigger};
use crate::time::{Timestamp, MAX_WATERMARK};

/// A window: something with a last timestamp it covers.
pub trait Window:
    Clone + Debug + Hash + Eq + Ord + Send + Serialize + DeserializeOwned + 'static
{
    fn max_timestamp(&self) -> Timestamp;
}

/// The half-open interval `[start, end)` of event or processing time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimeWindow {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl TimeWindow {
    pub fn new(start: Timestamp, end: Timestamp) -> Self {
        Self { start, end }
    }

    /// Flink's rule: touching windows intersect too.
    pub fn intersects(&self, other: &TimeWindow) -> bool {
        self.start <= other.end && self.end >= other.start
    }

    pub fn cover(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow::new(self.start.min(other.start), self.end.max(other.end))
    }

    /// Start of the window of `size` (shifted by `offset`) containing `timestamp`.
    pub fn start_with_offset(timestamp: Timestamp, offset: i64, size: i64) -> Timestamp {
        let remainder = (timestamp - offset).rem_euclid(size);
        timestamp - remainder
    }

    /// Groups of overlapping windows (only groups of two or more), each with
    /// the window covering it. Used by session windows.
    pub fn merge_windows(windows: &[TimeWindow]) -> Vec<(TimeWindow, Vec<TimeWindow>)> {
        let mut sorted = windows.to_vec();
        sorted.sort();
        let mut groups: Vec<(TimeWindow, Vec<TimeWindow>)> = Vec::new();
        for w in sorted {
            match groups.last_mut() {
                Some((cover, members)) if cover.intersects(&w) => {
                    *cover = cover.cover(&w);
                    members.push(w);
                }
                _ => groups.push((w, vec![w])),
            }
        }
        groups.retain(|(_, members)| members.len() > 1);
        groups
    }
}

impl Window for TimeWindow {
    fn max_timestamp(&self) -> Timestamp {
        self.end - 1
    }
}

/// The one window of [`GlobalWindows`]: it never ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GlobalWindow;

impl Window for GlobalWindow {
    fn max_timestamp(&self) -> Timestamp {
        MAX_WATERMARK
    }
}

/// Puts elements into windows.
pub trait WindowAssigner<T>: Clone + Send + Sync + 'static {
    type W: Window;
    type DefaultTrigger: Trigger<T, Self::W>;

    fn assign(
        &self,
        value: &T,
        timestamp: Timestamp,
        processing_time: Timestamp,
        out: &mut SmallVec<[Self::W; 4]>,
    );
    fn default_trigger(&self) -> Self::DefaultTrigger;
    fn is_event_time(&self) -> bool;

    /// Merging assigners (sessions) report groups of windows to merge.
    fn is_merging(&self) -> bool {
        false
    }
    fn merge_windows(&self, _windows: &[Self::W]) -> Vec<(Self::W, Vec<Self::W>)> {
        Vec::new()
    }
}

/// Fixed-size, non-overlapping event-time windows.
#[derive(Debug, Clone, Copy)]
pub struct TumblingEventTimeWindows {
    size: i64,
    offset: i64,
}

impl TumblingEventTimeWindows {
    pub fn of(size_ms: i64) -> Self {
        Self::with_offset(size_ms, 0)
    }
    pub fn with_offset(size_ms: i64, offset_ms: i64) -> Self {
        let size = size_ms.max(1);
        Self {
            size,
            offset: offset_ms.rem_euclid(size),
        }
    }
}

impl<T> WindowAssigner<T> for TumblingEventTimeWindows {
    type W = TimeWindow;
    type DefaultTrigger = EventTimeTrigger;

    #[inline]
    fn assign(&self, _: &T, ts: Timestamp, _: Timestamp, out: &mut SmallVec<[TimeWindow; 4]>) {
        let start = TimeWindow::start_with_offset(ts, self.offset, self.size);
        out.push(TimeWindow::new(start, start + self.size));
    }
    fn default_trigger(&self) -> EventTimeTrigger {
        EventTimeTrigger
    }
    fn is_event_time(&self) -> bool {
        true
    }
}

/// Fixed-size event-time windows that start every `slide`.
#[derive(Debug, Clone, Copy)]
pub struct SlidingEventTimeWindows {
    size: i64,
    slide: i64,
    offset: i64,
}

impl SlidingEventTimeWindows {
    pub fn of(size_ms: i64, slide_ms: i64) -> Self {
        let slide = slide_ms.max(1);
        Self {
            size: size_ms.max(1),
            slide,
            offset: 0,
        }
    }
}

fn sliding(ts: Timestamp, size: i64, slide: i64, offset: i64, out: &mut SmallVec<[TimeWindow; 4]>) {
    let last_start = TimeWindow::start_with_offset(ts, offset, slide);
    let mut start = last_start;
    while start > ts - size {
        out.push(TimeWindow::new(start, start + size));
        start -= slide;
    }
}

impl<T> WindowAssigner<T> for SlidingEventTimeWindows {
    type W = TimeWindow;
    type DefaultTrigger = EventTimeTrigger;

    fn assign(&self, _: &T, ts: Timestamp, _: Timestamp, out: &mut SmallVec<[TimeWindow; 4]>) {
        sliding(ts, self.size, self.slide, self.offset, out);
    }
    fn default_trigger(&self) -> EventTimeTrigger {
        EventTimeTrigger
    }
    fn is_event_time(&self) -> bool {
        true
    }
}

/// Event-time sessions: an element opens `[ts, ts + gap)`, overlapping or
/// touching sessions of one key merge.
#[derive(Debug, Clone, Copy)]
pub struct EventTimeSessionWindows {
    gap: i64,
}

impl EventTimeSessionWindows {
    pub fn with_gap(gap_ms: i64) -> Self {
        Self { gap: gap_ms.max(1) }
    }
}

impl<T> WindowAssigner<T> for EventTimeSessionWindows {
    type W = TimeWindow;
    type DefaultTrigger = EventTimeTrigger;

    fn assign(&self, _: &T, ts: Timestamp, _: Timestamp, out: &mut SmallVec<[TimeWindow; 4]>) {
        out.push(TimeWindow::new(ts, ts.saturating_add(self.gap)));
    }
    fn default_trigger(&self) -> EventTimeTrigger {
        EventTimeTrigger
    }
    fn is_event_time(&self) -> bool {
        true
    }
    fn is_merging(&self) -> bool {
        true
    }
    fn merge_windows(&self, windows: &[TimeWindow]) -> Vec<(TimeWindow, Vec<TimeWindow>)> {
        TimeWindow::merge_windows(windows)
    }
}

/// Fixed-size, non-overlapping processing-time windows.
#[derive(Debug, Clone, Copy)]
pub struct TumblingProcessingTimeWindows {
    size: i64,
}

impl TumblingProcessingTimeWindows {
    pub fn of(size_ms: i64) -> Self {
        Self {
            size: size_ms.max(1),
        }
    }
}

impl<T> WindowAssigner<T> for TumblingProcessingTimeWindows {
    type W = TimeWindow;
    type DefaultTrigger = ProcessingTimeTrigger;

    fn assign(&self, _: &T, _: Timestamp, now: Timestamp, out: &mut SmallVec<[TimeWindow; 4]>) {
        let start = TimeWindow::start_with_offset(now, 0, self.size);
        out.push(TimeWindow::new(start, start + self.size));
    }
    fn default_trigger(&self) -> ProcessingTimeTrigger {
        ProcessingTimeTrigger
    }
    fn is_event_time(&self) -> bool {
        false
    }
}

/// Fixed-size processing-time windows that start every `slide`.
#[derive(Debug, Clone, Copy)]
pub struct SlidingProcessingTimeWindows {
    size: i64,
    slide: i64,
}

impl SlidingProcessingTimeWindows {
    pub fn of(size_ms: i64, slide_ms: i64) -> Self {
        Self {
            size: size_ms.max(1),
            slide: slide_ms.max(1),
        }
    }
}

impl<T> WindowAssigner<T> for SlidingProcessingTimeWindows {
    type W = TimeWindow;
    type DefaultTrigger = ProcessingTimeTrigger;

    fn assign(&self, _: &T, _: Timestamp, now: Timestamp, out: &mut SmallVec<[TimeWindow; 4]>) {
        sliding(now, self.size, self.slide, 0, out);
    }
    fn default_trigger(&self) -> ProcessingTimeTrigger {
        ProcessingTimeTrigger
    }
    fn is_event_time(&self) -> bool {
        false
    }
}

/// All elements of a key in one window that never ends; use with a trigger.
#[derive(Debug, Clone, Copy)]
pub struct GlobalWindows;

impl GlobalWindows {
    pub fn create() -> Self {
        GlobalWindows
    }
}

impl<T> WindowAssigner<T> for GlobalWindows {
    type W = GlobalWindow;
    type DefaultTrigger = NeverTrigger;

    fn assign(&self, _: &T, _: Timestamp, _: Timestamp, out: &mut SmallVec<[GlobalWindow; 4]>) {
        out.push(GlobalWindow);
    }
    fn default_trigger(&self) -> NeverTrigger {
        NeverTrigger
    }
    fn is_event_time(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign<A: WindowAssigner<()>>(a: &A, ts: i64) -> Vec<A::W> {
        let mut out = SmallVec::new();
        a.assign(&(), ts, 0, &mut out);
        let mut v = out.to_vec();
        v.sort();
        v
    }

    #[test]
    fn tumbling_aligns_to_epoch_also_for_negative_time() {
        let t = TumblingEventTimeWindows::of(10);
        assert_eq!(assign(&t, 0), vec![TimeWindow::new(0, 10)]);
        assert_eq!(assign(&t, 19), vec![TimeWindow::new(10, 20)]);
        assert_eq!(assign(&t, -1), vec![TimeWindow::new(-10, 0)]);
    }

    #[test]
    fn sliding_covers_every_window_containing_ts() {
        let s = SlidingEventTimeWindows::of(10, 4);
        assert_eq!(
            assign(&s, 9),
            vec![
                TimeWindow::new(0, 10),
                TimeWindow::new(4, 14),
                TimeWindow::new(8, 18)
            ]
        );
        let s = SlidingEventTimeWindows::of(4, 10); // gaps between windows
        assert!(assign(&s, 5).is_empty());
        assert_eq!(assign(&s, 12), vec![TimeWindow::new(10, 14)]);
    }

    #[test]
    fn session_merge_groups_touching_windows() {
        let ws = [
            TimeWindow::new(0, 10),
            TimeWindow::new(10, 15),
            TimeWindow::new(20, 30),
            TimeWindow::new(25, 26),
            TimeWindow::new(40, 41),
        ];
        assert_eq!(
            TimeWindow::merge_windows(&ws),
            vec![
                (
                    TimeWindow::new(0, 15),
                    vec![TimeWindow::new(0, 10), TimeWindow::new(10, 15)]
                ),
                (
                    TimeWindow::new(20, 30),
                    vec![TimeWindow::new(20, 30), TimeWindow::new(25, 26)]
                ),
            ]
        );
    }
}
