//! Container images mapped to local binaries.
//!
//! There is no registry and no container engine, so an image reference is
//! only a key: the first configured glob pattern that matches it names the
//! local program to run (`rill*=target/release/rill`). A container whose
//! image matches nothing can still run when it sets `command`, which is
//! then looked up on `PATH` like a shell would.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One `PATTERN=BINARY` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRule {
    /// Glob over the full image reference (`*` any run, `?` one character).
    pub pattern: String,
    /// The program run for matching images.
    pub binary: PathBuf,
}

/// Ordered image rules: the first match wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMap {
    rules: Vec<ImageRule>,
}

impl ImageMap {
    /// An empty map (only containers with `command` can run).
    pub fn new() -> Self {
        ImageMap::default()
    }

    /// Add a rule at the end (lowest priority so far). A relative binary
    /// path is made absolute against the current directory now, so pods
    /// whose working directory differs still find it.
    pub fn push(&mut self, pattern: impl Into<String>, binary: impl AsRef<Path>) -> &mut Self {
        let binary = binary.as_ref();
        let binary = if binary.is_relative() && binary.components().count() > 1 {
            std::env::current_dir()
                .map(|d| d.join(binary))
                .unwrap_or_else(|_| binary.to_path_buf())
        } else {
            binary.to_path_buf()
        };
        self.rules.push(ImageRule {
            pattern: pattern.into(),
            binary,
        });
        self
    }

    /// Builder form of [`ImageMap::push`].
    pub fn with(mut self, pattern: impl Into<String>, binary: impl AsRef<Path>) -> Self {
        self.push(pattern, binary);
        self
    }

    /// Parse `PATTERN=BINARY` as given on the command line.
    pub fn parse_rule(spec: &str) -> Result<(String, PathBuf)> {
        match spec.split_once('=') {
            Some((p, b)) if !p.is_empty() && !b.is_empty() => Ok((p.to_string(), PathBuf::from(b))),
            _ => Err(Error::BadRequest(format!(
                "image rule \"{spec}\" must look like PATTERN=BINARY"
            ))),
        }
    }

    /// The rules in priority order.
    pub fn rules(&self) -> &[ImageRule] {
        &self.rules
    }

    /// The binary for `image`, if any rule matches.
    pub fn resolve(&self, image: &str) -> Option<&Path> {
        self.rules
            .iter()
            .find(|r| glob_match(&r.pattern, image))
            .map(|r| r.binary.as_path())
    }
}

/// Match `text` against a glob with `*` and `?`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("rill*", "rill:1.0"));
        assert!(glob_match("*rill*", "ghcr.io/x/rill:latest"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("rill*", "ghcr.io/rill"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a", "ab"));
    }

    #[test]
    fn first_match_wins() {
        let m = ImageMap::new()
            .with("rill:debug*", "/bin/debug")
            .with("rill*", "/bin/rill");
        assert_eq!(m.resolve("rill:debug-1"), Some(Path::new("/bin/debug")));
        assert_eq!(m.resolve("rill:1"), Some(Path::new("/bin/rill")));
        assert_eq!(m.resolve("nginx"), None);
    }

    #[test]
    fn parses_rules() {
        let (p, b) = ImageMap::parse_rule("rill*=target/release/rill").unwrap();
        assert_eq!(p, "rill*");
        assert_eq!(b, PathBuf::from("target/release/rill"));
        assert!(ImageMap::parse_rule("nope").is_err());
        assert!(ImageMap::parse_rule("=x").is_err());
    }
}
