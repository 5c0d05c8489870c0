//! The `windowed-sum` contract: results equal a brute-force model of Flink's
//! window semantics on random, shuffled, out-of-order and late input, and do
//! not depend on parallelism.

use proptest::prelude::*;
use rill_tests::{reference, run_windowed_sum, Rec, Spec};

fn records(max_len: usize) -> impl Strategy<Value = Vec<Rec>> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["a", "b", "c", "key-4"]),
            -20i64..400,
            -50i64..50,
        ),
        0..max_len,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(k, ts, value)| Rec {
                key: k.to_string(),
                ts,
                value,
            })
            .collect()
    })
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        (1i64..60).prop_map(Spec::Tumbling),
        (1i64..60, 1i64..60).prop_map(|(size, slide)| Spec::Sliding(size, slide)),
        (1i64..40).prop_map(Spec::Session),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn windows_match_the_reference_model(
        recs in records(120),
        spec in spec(),
        ooo in 0i64..40,
        lateness in prop_oneof![Just(0i64), 1i64..80],
        parallelism in 1usize..4,
    ) {
        let expected = reference(&recs, spec, ooo, lateness);
        let actual = run_windowed_sum(&recs, spec, ooo, lateness, parallelism);
        prop_assert_eq!(&actual.0, &expected.0, "windows.csv for {:?}", spec);
        prop_assert_eq!(&actual.1, &expected.1, "late.csv for {:?}", spec);
    }

    #[test]
    fn shuffled_input_in_order_output_is_independent_of_arrival_order(
        recs in records(80),
        size in 1i64..50,
    ) {
        // With out-of-orderness covering the whole time range nothing is
        // late, so any arrival order gives the same windows.
        let mut shuffled = recs.clone();
        shuffled.reverse();
        let a = run_windowed_sum(&recs, Spec::Tumbling(size), 1_000, 0, 2);
        let b = run_windowed_sum(&shuffled, Spec::Tumbling(size), 1_000, 0, 3);
        prop_assert_eq!(a, b);
    }
}

fn recs(items: &[(&str, i64, i64)]) -> Vec<Rec> {
    items
        .iter()
        .map(|&(k, ts, value)| Rec {
            key: k.into(),
            ts,
            value,
        })
        .collect()
}

#[test]
fn late_data_goes_to_late_csv_and_lateness_refires() {
    let input = recs(&[
        ("a", 1000, 1),
        ("a", 2000, 2),
        ("a", 12_000, 3), // watermark 10999: [0,10000) fires
        ("a", 500, 7),    // late by 0 lateness: dropped
    ]);
    let (windows, late) = run_windowed_sum(&input, Spec::Tumbling(10_000), 1000, 0, 1);
    assert_eq!(windows, vec!["a,0,10000,2,3", "a,10000,20000,1,3"]);
    assert_eq!(late, vec!["a,500,7"]);

    // With 5 s allowed lateness the straggler re-fires its window.
    let (windows, late) = run_windowed_sum(&input, Spec::Tumbling(10_000), 1000, 5000, 1);
    assert_eq!(
        windows,
        vec!["a,0,10000,2,3", "a,0,10000,3,10", "a,10000,20000,1,3"]
    );
    assert!(late.is_empty());
}

#[test]
fn sessions_merge_across_out_of_order_arrivals() {
    // Two sessions of key k bridged by a late-arriving element.
    let input = recs(&[("k", 0, 1), ("k", 20, 2), ("k", 10, 4), ("x", 100, 1)]);
    let (windows, late) = run_windowed_sum(&input, Spec::Session(10), 50, 0, 2);
    assert_eq!(windows, vec!["k,0,30,3,7", "x,100,110,1,1"]);
    assert!(late.is_empty());
    assert_eq!(
        (windows, late),
        rill_tests::reference(&input, Spec::Session(10), 50, 0)
    );
}

#[test]
fn sliding_windows_count_an_element_in_every_window() {
    let input = recs(&[("a", 9, 1)]);
    let (windows, _) = run_windowed_sum(&input, Spec::Sliding(10, 4), 0, 0, 1);
    assert_eq!(windows, vec!["a,0,10,1,1", "a,4,14,1,1", "a,8,18,1,1"]);
}

#[test]
fn malformed_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, "a,1,1\nb,not-a-time,2\n").unwrap();
    let args: Vec<String> = [
        "--input",
        input.to_str().unwrap(),
        "--output",
        dir.path().join("out").to_str().unwrap(),
        "--window",
        "tumbling:10",
        "--out-of-orderness",
        "0",
    ]
    .map(String::from)
    .to_vec();
    let err = rill_tests::run_entry("windowed-sum", &args, 2).unwrap_err();
    assert!(
        err.contains("line 2") && err.contains("not-a-time"),
        "{err}"
    );

    let bad_spec: Vec<String> = args
        .iter()
        .map(|a| {
            if a == "tumbling:10" {
                "hopping:10".to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let err = rill_tests::run_entry("windowed-sum", &bad_spec, 1).unwrap_err();
    assert!(err.contains("--window"), "{err}");
}
