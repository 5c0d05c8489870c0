//! The `rill` binary as users call it.

use std::process::Command;

fn rill(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(args)
        .output()
        .expect("rill runs")
}

#[test]
fn windowed_sum_contract_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let out = dir.path().join("out");
    std::fs::write(&input, "a,1000,1\na,2000,2\nb,1500,5\na,12000,3\na,500,7\n").unwrap();
    let o = rill(&[
        "run",
        "windowed-sum",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--window",
        "tumbling:10000",
        "--out-of-orderness",
        "1000",
        "--parallelism",
        "3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut windows: Vec<String> = std::fs::read_to_string(out.join("windows.csv"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    windows.sort();
    assert_eq!(
        windows,
        ["a,0,10000,2,3", "a,10000,20000,1,3", "b,0,10000,1,5"]
    );
    assert_eq!(
        std::fs::read_to_string(out.join("late.csv")).unwrap(),
        "a,500,7\n"
    );
}

#[test]
fn bench_prints_its_figures_last() {
    let o = rill(&["bench", "window", "--events", "200000", "--keys", "100"]);
    assert!(o.status.success());
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("events=200000 seconds="), "{last}");
    assert!(last.ends_with("/s"), "{last}");
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let o = rill(&["run", "no-such-job"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no job 'no-such-job'"));

    let o = rill(&[
        "run",
        "windowed-sum",
        "--input",
        "/nonexistent.csv",
        "--output",
        "/tmp/x",
        "--window",
        "tumbling:5",
        "--out-of-orderness",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.csv"));

    let o = rill(&["-D", "paralelism.default=2", "run", "wordcount"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown configuration key"));
}

#[test]
fn plan_shows_operators_and_parallelism() {
    let o = rill(&["plan", "wordcount", "-p", "2"]);
    assert!(o.status.success());
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(
        plan.contains("Tokenizer") && plan.contains("HASH<-Tokenizer"),
        "{plan}"
    );
    assert!(plan.contains("p=2"), "{plan}");
}
