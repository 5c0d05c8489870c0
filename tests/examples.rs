//! The example jobs run end to end with checked outputs.

use std::collections::HashMap;

use rill_examples::top_speed::{self, CarEvent};
use rill_tests::{run_entry, sorted_lines};

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn wordcount_counts_words_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("counts.csv");
    std::fs::write(&input, "the cat\nThe dog, the END\n\ncat\n").unwrap();
    run_entry(
        "wordcount",
        &args(&[
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ]),
        3,
    )
    .unwrap();
    // Running counts: the final count of each word is its largest.
    let mut finals: HashMap<String, u64> = HashMap::new();
    for line in sorted_lines(&output) {
        let (w, c) = line.split_once(',').unwrap();
        let c: u64 = c.parse().unwrap();
        let e = finals.entry(w.to_string()).or_default();
        *e = (*e).max(c);
    }
    let expected: HashMap<String, u64> = [("the", 3), ("cat", 2), ("dog", 1), ("end", 1)]
        .into_iter()
        .map(|(w, c)| (w.to_string(), c))
        .collect();
    assert_eq!(finals, expected);
    assert_eq!(
        sorted_lines(&output).len(),
        7,
        "one update per word occurrence"
    );
}

#[test]
fn top_speed_reports_the_fastest_of_the_last_ten_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cars.csv");
    let output = dir.path().join("top.csv");
    let events = top_speed::generate(3, 40);
    std::fs::write(
        &input,
        events.iter().map(|e| e.csv() + "\n").collect::<String>(),
    )
    .unwrap();
    run_entry(
        "top-speed",
        &args(&[
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ]),
        2,
    )
    .unwrap();

    // Brute force: replay each car, fire when it moved 50 m past the last
    // firing element, report the max speed over the last 10 s (earliest on ties).
    let events: Vec<CarEvent> = events
        .iter()
        .map(|e| CarEvent::parse(&e.csv(), 0).unwrap().unwrap())
        .collect();
    let mut expected = Vec::new();
    for car in 0..3 {
        let mine: Vec<&CarEvent> = events.iter().filter(|e| e.car == car).collect();
        let mut last: Option<&CarEvent> = None;
        for (i, e) in mine.iter().enumerate() {
            match last {
                None => last = Some(e),
                Some(l) if e.distance - l.distance > top_speed::TRIGGER_METERS => {
                    last = Some(e);
                    let recent = mine[..=i]
                        .iter()
                        .filter(|x| x.time > e.time - top_speed::EVICTION_MS);
                    let best = recent.fold(None::<&CarEvent>, |b, x| match b {
                        Some(b) if b.speed >= x.speed => Some(b),
                        _ => Some(x),
                    });
                    expected.push(best.unwrap().csv());
                }
                Some(_) => {}
            }
        }
    }
    expected.sort();
    assert!(expected.len() > 20, "the data drives many firings");
    assert_eq!(sorted_lines(&output), expected);
}

#[test]
fn driving_score_fires_on_the_end_marker_and_rescores_stragglers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("drive.csv");
    let output = dir.path().join("scores.csv");
    // driver,time,speed,accel,end — gap 60 s, lateness 120 s, disorder 10 s.
    let lines = [
        "d1,0,50,0,0",
        "d1,10000,120,0,0",  // speeding: -2
        "d1,30000,60,-4,0",  // harsh braking: -3
        "d1,40000,0,0,1",    // end of trip: scored at once (4 events, 95)
        "d1,20000,130,0,0",  // straggler: rescored (5 events, 93)
        "d2,200000,50,0,0",  // watermark 189999 passes d1's end (99999)
        "d1,35000,50,4,0",   // late but within lateness: rescored (6, 92)
        "d2,300000,50,0,0",  // watermark 289999: d1's trip is dropped
        "d1,36000,50,0,0",   // too late: dropped
        "d2,301000,150,0,0", // -2
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    run_entry(
        "driving-score",
        &args(&[
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--gap-ms",
            "60000",
            "--allowed-lateness-ms",
            "120000",
            "--out-of-orderness-ms",
            "10000",
        ]),
        2,
    )
    .unwrap();
    let got = std::fs::read_to_string(&output).unwrap();
    let d1: Vec<&str> = got.lines().filter(|l| l.starts_with("d1,")).collect();
    let d2: Vec<&str> = got.lines().filter(|l| l.starts_with("d2,")).collect();
    assert_eq!(
        d1,
        vec!["d1,0,100000,4,95", "d1,0,100000,5,93", "d1,0,100000,6,92"],
        "scorings of d1 in arrival order"
    );
    // d2 never sent an end marker: its trips are scored when they end.
    assert_eq!(d2, vec!["d2,200000,260000,1,100", "d2,300000,361000,2,98"]);
}

#[test]
fn driving_score_runs_on_its_embedded_sample() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("scores.csv");
    run_entry(
        "driving-score",
        &args(&["--output", output.to_str().unwrap()]),
        1,
    )
    .unwrap();
    let lines = sorted_lines(&output);
    // Each of the three drivers: one scoring at the end marker, one more for
    // the straggler that arrives after it.
    for driver in ["kim", "lee", "park"] {
        let mine: Vec<&String> = lines.iter().filter(|l| l.starts_with(driver)).collect();
        assert_eq!(mine.len(), 2, "{driver}: {mine:?}");
        assert!(mine.iter().any(|l| l.contains(",19,")) && mine.iter().any(|l| l.contains(",20,")));
    }
}

#[test]
fn unknown_job_options_are_rejected() {
    let err = run_entry("wordcount", &args(&["--inptu", "x"]), 1).unwrap_err();
    assert!(err.contains("--inptu"), "{err}");
}

#[test]
fn wordcount_reads_a_socket() {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"to be or\nnot to be\n").unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("counts.csv");
    run_entry(
        "wordcount",
        &args(&["--socket", &addr, "--output", output.to_str().unwrap()]),
        2,
    )
    .unwrap();
    server.join().unwrap();
    let lines = sorted_lines(&output);
    assert!(
        lines.contains(&"to,2".to_string()) && lines.contains(&"be,2".to_string()),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 6);
}
