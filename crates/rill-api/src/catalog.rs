//! Jobs compiled into a binary, looked up by name.
//!
//! Closures cannot travel between processes, so every process of a cluster
//! runs the same binary and rebuilds a job's graph from its catalogue entry
//! and arguments.

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::stream::StreamEnv;

/// A job: builds its graph into the environment from its arguments.
pub type JobFn = fn(&mut StreamEnv, &JobArgs) -> Result<()>;

/// One named job of a catalogue.
#[derive(Clone, Copy)]
pub struct JobEntry {
    pub name: &'static str,
    pub build: JobFn,
}

/// The jobs a binary can run.
#[derive(Clone, Default)]
pub struct Catalog {
    entries: Vec<JobEntry>,
}

impl Catalog {
    pub fn new(entries: Vec<JobEntry>) -> Self {
        Self { entries }
    }

    pub fn get(&self, name: &str) -> Result<&JobEntry> {
        self.entries.iter().find(|e| e.name == name).ok_or_else(|| {
            Error::Args(format!(
                "no job '{name}' in this binary's catalogue (known: {})",
                self.names().join(", ")
            ))
        })
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name).collect()
    }
}

/// Builds a [`Catalog`] from job functions; a function `top_speed` becomes
/// the entry `top-speed`.
#[macro_export]
macro_rules! catalog {
    ($($job:path),* $(,)?) => {
        $crate::Catalog::new(vec![$(
            $crate::JobEntry {
                name: $crate::catalog::entry_name(stringify!($job)),
                build: $job,
            }
        ),*])
    };
}

/// `examples::top_speed` → `top-speed` (leaked once per entry at start-up).
pub fn entry_name(path: &'static str) -> &'static str {
    let last = path.rsplit("::").next().unwrap_or(path).trim();
    if last.contains('_') {
        Box::leak(last.replace('_', "-").into_boxed_str())
    } else {
        last
    }
}

/// A job's arguments: `--name value`, `--flag`, and positionals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobArgs {
    raw: Vec<String>,
    named: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

impl JobArgs {
    pub fn parse<I: IntoIterator<Item = S>, S: Into<String>>(args: I) -> Self {
        let raw: Vec<String> = args.into_iter().map(Into::into).collect();
        let mut named = Vec::new();
        let mut positional = Vec::new();
        let mut it = raw.iter().peekable();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if let Some((k, v)) = name.split_once('=') {
                    named.push((k.to_string(), Some(v.to_string())));
                } else if it.peek().is_some_and(|n| !n.starts_with("--")) {
                    named.push((name.to_string(), it.next().cloned()));
                } else {
                    named.push((name.to_string(), None));
                }
            } else {
                positional.push(a.clone());
            }
        }
        Self {
            raw,
            named,
            positional,
        }
    }

    /// The arguments as given (to rebuild the job elsewhere).
    pub fn raw(&self) -> &[String] {
        &self.raw
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.named
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn flag(&self, name: &str) -> bool {
        self.named.iter().any(|(k, _)| k == name)
    }

    pub fn required(&self, name: &str) -> Result<&str> {
        self.get(name)
            .ok_or_else(|| Error::Args(format!("missing --{name}")))
    }

    pub fn parse_opt<T: FromStr>(&self, name: &str) -> Result<Option<T>> {
        self.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| Error::Args(format!("--{name}: cannot parse '{v}'")))
            })
            .transpose()
    }

    pub fn parse_or<T: FromStr>(&self, name: &str, default: T) -> Result<T> {
        Ok(self.parse_opt(name)?.unwrap_or(default))
    }

    pub fn positional(&self) -> &[String] {
        &self.positional
    }

    /// Names given that are not in `known` (to reject typos).
    pub fn unknown(&self, known: &[&str]) -> Vec<String> {
        self.named
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !known.contains(&k.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_flags_and_positionals() {
        let a = JobArgs::parse(["--input", "f.csv", "--verbose", "--window=tumbling:10", "x"]);
        assert_eq!(a.get("input"), Some("f.csv"));
        assert!(a.flag("verbose"));
        assert_eq!(a.get("verbose"), None);
        assert_eq!(a.get("window"), Some("tumbling:10"));
        assert_eq!(a.positional(), &["x".to_string()]);
        assert!(a.required("output").is_err());
        assert!(JobArgs::parse(["--n", "x"]).parse_opt::<u32>("n").is_err());
        assert_eq!(a.unknown(&["input", "window"]), vec!["verbose".to_string()]);
    }

    #[test]
    fn entry_names_are_kebab_case() {
        assert_eq!(entry_name("examples :: top_speed"), "top-speed");
        assert_eq!(entry_name("wordcount"), "wordcount");
    }
}
