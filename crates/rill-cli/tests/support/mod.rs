//! What the end-to-end tests of `windowed-sum` share: a deterministic input
//! and a record-for-record comparison of outputs.

#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;

/// Deterministic input: 40 keys, event times mostly increasing with jitter
/// so some records are late.
pub fn write_input(path: &Path, records: u64, seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut text = String::new();
    for i in 0..records {
        let key = next() % 40;
        let ts = (i * 4) as i64 + (next() % 700) as i64 - 350;
        let value = (next() % 2000) as i64 - 1000;
        text.push_str(&format!("k{key},{ts},{value}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// Sorted `(windows, late)` lines of two runs must be equal; the panic
/// says how many lines are missing and how many are unexpected.
pub fn assert_same(
    actual: &(Vec<String>, Vec<String>),
    expected: &(Vec<String>, Vec<String>),
    what: &str,
) {
    for (name, a, e) in [
        ("windows", &actual.0, &expected.0),
        ("late", &actual.1, &expected.1),
    ] {
        if a != e {
            let missing = e.iter().filter(|l| a.binary_search(l).is_err()).count();
            let extra = a.iter().filter(|l| e.binary_search(l).is_err()).count();
            panic!(
                "{what}: {name}.csv has {} lines, the uninterrupted run {}: {missing} missing, {extra} unexpected (or duplicated)",
                a.len(),
                e.len()
            );
        }
    }
}
