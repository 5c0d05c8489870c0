//! Label and field selectors, as pure parse-and-match functions.
//!
//! `list` and `watch` filter through these; keeping them free of HTTP and
//! storage makes the selector grammar unit-testable on its own. A bad
//! selector is a `400 BadRequest`, never a panic.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::meta;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` / `key==value`.
    Eq(String, String),
    /// `key!=value` (also matches objects without the label).
    NotEq(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also matches objects without the label).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// `key>n` (integer comparison).
    Gt(String, i64),
    /// `key<n` (integer comparison).
    Lt(String, i64),
}

/// A parsed label selector: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    /// Parse the `labelSelector` query syntax.
    pub fn parse(input: &str) -> Result<Self> {
        let mut reqs = Vec::new();
        for part in split_top_level(input)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether the selector matches nothing-filtering (empty).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Match against a label lookup.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
            Requirement::Gt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Requirement::Lt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }

    /// Match against an object's `metadata.labels`.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = meta::labels(obj);
        self.matches_with(|k| labels.iter().find(|(lk, _)| *lk == k).map(|(_, v)| *v))
    }
}

/// Split on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Result<Vec<&str>> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(bad(input, "unbalanced parenthesis"));
                }
            }
            ',' if depth == 0 => {
                out.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad(input, "unbalanced parenthesis"));
    }
    out.push(&input[start..]);
    Ok(out)
}

fn bad(input: &str, why: &str) -> Error {
    Error::BadRequest(format!("unable to parse requirement: {why}: \"{input}\""))
}

fn check_key(k: &str, whole: &str) -> Result<String> {
    let k = k.trim();
    let valid = !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(k.to_string())
    } else {
        Err(bad(whole, &format!("invalid label key \"{k}\"")))
    }
}

fn check_value(v: &str, whole: &str) -> Result<String> {
    let v = v.trim();
    let valid = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(v.to_string())
    } else {
        Err(bad(whole, &format!("invalid label value \"{v}\"")))
    }
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(whole, "expected a parenthesised set of values"))?;
    inner
        .split(',')
        .map(|v| check_value(v, whole))
        .collect::<Result<Vec<_>>>()
}

fn parse_requirement(part: &str) -> Result<Requirement> {
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(check_key(k, part)?));
    }
    // Set-based operators are separated by whitespace from the key.
    let mut words = part.splitn(2, char::is_whitespace);
    let first = words.next().unwrap_or("");
    if let Some(rest) = words.next() {
        let rest = rest.trim_start();
        if let Some(set) = rest.strip_prefix("notin") {
            return Ok(Requirement::NotIn(
                check_key(first, part)?,
                parse_set(set, part)?,
            ));
        }
        if let Some(set) = rest.strip_prefix("in") {
            return Ok(Requirement::In(
                check_key(first, part)?,
                parse_set(set, part)?,
            ));
        }
    }
    for (op, ctor) in [
        ("==", Requirement::Eq as fn(String, String) -> Requirement),
        ("!=", Requirement::NotEq),
        ("=", Requirement::Eq),
    ] {
        if let Some((k, v)) = part.split_once(op) {
            return Ok(ctor(check_key(k, part)?, check_value(v, part)?));
        }
    }
    for (op, gt) in [(">", true), ("<", false)] {
        if let Some((k, v)) = part.split_once(op) {
            let n: i64 = v
                .trim()
                .parse()
                .map_err(|_| bad(part, "expected an integer"))?;
            let k = check_key(k, part)?;
            return Ok(if gt {
                Requirement::Gt(k, n)
            } else {
                Requirement::Lt(k, n)
            });
        }
    }
    Ok(Requirement::Exists(check_key(part, part)?))
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    /// Dotted path, e.g. `metadata.name` or `status.phase`.
    pub path: String,
    /// The value to compare with.
    pub value: String,
    /// `!=` rather than `=`.
    pub negated: bool,
}

/// A parsed field selector: all terms must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldTerm>);

impl FieldSelector {
    /// Parse the `fieldSelector` query syntax (`a=b,c!=d`).
    pub fn parse(input: &str) -> Result<Self> {
        let mut terms = Vec::new();
        for part in input.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (path, value, negated) = if let Some((k, v)) = part.split_once("!=") {
                (k, v, true)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, v, false)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, v, false)
            } else {
                return Err(Error::BadRequest(format!(
                    "invalid field selector: '{part}': expected an operator"
                )));
            };
            let path = path.trim();
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(Error::BadRequest(format!(
                    "invalid field selector: '{part}': bad field path"
                )));
            }
            terms.push(FieldTerm {
                path: path.to_string(),
                value: value.trim().to_string(),
                negated,
            });
        }
        Ok(FieldSelector(terms))
    }

    /// Match against an object. A missing field compares as the empty string;
    /// numbers and booleans compare by their JSON text.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|t| {
            let path: Vec<&str> = t.path.split('.').collect();
            let actual = match meta::get_path(obj, &path) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (actual == t.value) != t.negated
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}, "status": {"phase": "Running"}})
    }

    #[test]
    fn parses_all_operators() {
        let s = LabelSelector::parse(
            "app=web, tier!=db,env in (prod, staging),zone notin (a),team,!legacy,n>3,m<9",
        )
        .unwrap();
        assert_eq!(
            s.0,
            vec![
                Requirement::Eq("app".into(), "web".into()),
                Requirement::NotEq("tier".into(), "db".into()),
                Requirement::In("env".into(), vec!["prod".into(), "staging".into()]),
                Requirement::NotIn("zone".into(), vec!["a".into()]),
                Requirement::Exists("team".into()),
                Requirement::DoesNotExist("legacy".into()),
                Requirement::Gt("n".into(), 3),
                Requirement::Lt("m".into(), 9),
            ]
        );
        assert_eq!(
            LabelSelector::parse("app==web").unwrap().0,
            vec![Requirement::Eq("app".into(), "web".into())]
        );
        assert!(LabelSelector::parse("").unwrap().is_empty());
    }

    #[test]
    fn matches_like_kubernetes() {
        let o = obj(json!({"app": "web", "env": "prod", "team": "x"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m("app=web"));
        assert!(!m("app=db"));
        assert!(m("app!=db"));
        assert!(m("missing!=x"), "!= matches objects without the label");
        assert!(m("env in (prod,dev)"));
        assert!(!m("env in (dev)"));
        assert!(m("env notin (dev)"));
        assert!(m("missing notin (dev)"));
        assert!(m("team"));
        assert!(!m("!team"));
        assert!(m("!missing"));
        assert!(m("app=web,env=prod"));
        assert!(!m("app=web,env=dev"));
        assert!(m(""));
    }

    #[test]
    fn rejects_bad_selectors() {
        for s in ["app in (a", "a b c", "app=(x)", "=x", "n>abc", "app in a"] {
            let e = LabelSelector::parse(s).unwrap_err();
            assert_eq!(e.code(), 400, "{s}");
        }
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&o);
        assert!(m("metadata.name=a"));
        assert!(m("metadata.name==a,metadata.namespace=ns"));
        assert!(!m("metadata.name!=a"));
        assert!(m("status.phase=Running"));
        assert!(!m("status.phase=Pending"));
        assert!(m("spec.nodeName="), "missing fields compare as empty");
        assert!(FieldSelector::parse("nonsense").is_err());
        assert!(FieldSelector::parse("a..b=c").is_err());
    }
}
