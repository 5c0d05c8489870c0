//! Structural-schema handling for custom resources: defaulting, pruning of
//! unknown fields and type validation, as the API server does with a CRD's
//! `openAPIV3Schema`.
//!
//! Operators rely on these: a field with a schema `default` is present when
//! the object is read back, a misspelled field disappears instead of being
//! silently kept, and a wrongly typed field is refused with 422. Pure
//! functions over JSON; the store calls [`apply`] on every custom-resource
//! write.

use serde_json::{Map, Value};

/// Default, prune and validate `obj` against a CRD version's
/// `openAPIV3Schema`. Returns the list of validation errors (empty when valid).
pub fn apply(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    // apiVersion, kind and metadata are the server's, never pruned here.
    let keep: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
        .iter()
        .filter_map(|k| obj.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    walk(obj, schema, "", &mut errors);
    if let Some(m) = obj.as_object_mut() {
        for (k, v) in keep {
            m.insert(k, v);
        }
    }
    errors
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn field(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(v: &mut Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    if v.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) && !path.is_empty() {
            errors.push(format!(
                "{path}: Invalid value: \"null\": {path} in body must be of type {}",
                schema
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("object")
            ));
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let got = type_name(v);
        let ok = got == want
            || (want == "number" && got == "integer")
            || (int_or_string && (got == "integer" || got == "string"));
        if !ok {
            errors.push(format!(
                "{path}: Invalid value: \"{got}\": {path} in body must be of type {want}: \"{got}\""
            ));
            return;
        }
    } else if int_or_string && !matches!(type_name(v), "integer" | "string") {
        errors.push(format!(
            "{path}: Invalid value: must be an integer or a string"
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            errors.push(format!(
                "{path}: Unsupported value: {v}: supported values: {}",
                list.join(", ")
            ));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                errors.push(format!("{path}: Invalid value: {v}: {path} in body should be greater than or equal to {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                errors.push(format!("{path}: Invalid value: {v}: {path} in body should be less than or equal to {max}"));
            }
        }
    }
    match v {
        Value::Object(m) => walk_object(m, schema, path, preserve, errors),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item, item_schema, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn walk_object(
    m: &mut Map<String, Value>,
    schema: &Value,
    path: &str,
    preserve: bool,
    errors: &mut Vec<String>,
) {
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    if let Some(props) = props {
        for (k, s) in props {
            if !m.contains_key(k) {
                if let Some(d) = s.get("default") {
                    m.insert(k.clone(), d.clone());
                }
            }
        }
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for r in required.iter().filter_map(Value::as_str) {
            if !m.contains_key(r) {
                errors.push(format!("{}: Required value", field(path, r)));
            }
        }
    }
    let keys: Vec<String> = m.keys().cloned().collect();
    for k in keys {
        let sub = props.and_then(|p| p.get(&k)).or(match additional {
            Some(a) if a.is_object() => Some(a),
            _ => None,
        });
        match sub {
            Some(s) => {
                if let Some(child) = m.get_mut(&k) {
                    walk(child, s, &field(path, &k), errors);
                }
            }
            None => {
                let allowed = preserve
                    || additional.and_then(Value::as_bool) == Some(true)
                    || (props.is_none() && additional.is_none());
                if !allowed {
                    m.remove(&k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string"},
                        "parallelism": {"type": "integer", "default": 1, "minimum": 1},
                        "mode": {"type": "string", "enum": ["application", "session"], "default": "application"},
                        "config": {"type": "object", "additionalProperties": {"type": "string"}},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "memory": {"x-kubernetes-int-or-string": true},
                        "args": {"type": "array", "items": {"type": "string"}}
                    }
                },
                "status": {"type": "object", "properties": {"state": {"type": "string"}}}
            }
        })
    }

    #[test]
    fn defaults_and_prunes() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "J", "metadata": {"name": "j"},
                           "spec": {"image": "i", "typo": 1, "config": {"a": "b"}, "extra": {"anything": [1]}, "memory": "1Gi"},
                           "junk": true});
        let errs = apply(&mut o, &schema());
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(o["spec"]["parallelism"], 1);
        assert_eq!(o["spec"]["mode"], "application");
        assert!(o["spec"].get("typo").is_none());
        assert!(o.get("junk").is_none());
        assert_eq!(o["spec"]["extra"]["anything"], json!([1]));
        assert_eq!(o["metadata"]["name"], "j");
        assert!(o.get("status").is_none(), "defaults do not create parents");
    }

    #[test]
    fn validates_types_required_enum_and_ranges() {
        let mut o = json!({"spec": {"parallelism": "two", "mode": "batch", "config": {"a": 1}, "args": ["x", 2], "memory": true}});
        let errs = apply(&mut o, &schema());
        let text = errs.join("\n");
        for needle in [
            "spec.image: Required value",
            "spec.parallelism",
            "spec.mode: Unsupported value",
            "spec.config.a",
            "spec.args[1]",
            "spec.memory",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        let mut low = json!({"spec": {"image": "i", "parallelism": 0}});
        assert_eq!(apply(&mut low, &schema()).len(), 1);
    }
}
