//! Decoding of the Kubernetes protobuf envelope for a few simple kinds.
//!
//! kubectl's typed generators (`kubectl create namespace|configmap|secret|
//! serviceaccount`) always send protobuf request bodies and never fall back
//! to JSON, so kube-sim reads those four kinds from protobuf into the same
//! JSON it stores. Other kinds answer 415 Unsupported Media Type. Only the
//! fields those commands set are read; everything else is skipped.
//!
//! Typed client-go clients (Helm's release storage among them) also send
//! the `DeleteOptions` of a delete as protobuf; those are read in full.

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// The four-byte prefix of a protobuf-encoded Kubernetes object.
pub const MAGIC: &[u8] = b"k8s\0";

fn bad(why: &str) -> Error {
    Error::BadRequest(format!("error decoding protobuf body: {why}"))
}

/// One field read off the wire.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| bad("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(bad("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next (field number, value), or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Other
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| bad("length overflow"))?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Field::Other
            }
            _ => return Err(bad("unsupported wire type")),
        };
        Ok(Some((key >> 3, field)))
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = r.field()? {
        out.push(f);
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("invalid UTF-8"))
}

/// Standard base64, as JSON carries `[]byte`.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A map entry message (key = 1, value = 2).
fn map_entry(b: &[u8]) -> Result<(String, &[u8])> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(k)) => key = text(k)?,
            (2, Field::Bytes(v)) => value = v,
            _ => {}
        }
    }
    Ok((key, value))
}

fn insert_map(obj: &mut Map<String, Value>, name: &str, b: &[u8], bytes: bool) -> Result<()> {
    let (k, v) = map_entry(b)?;
    let v = if bytes { base64(v) } else { text(v)? };
    let m = obj.entry(name).or_insert_with(|| json!({}));
    if let Some(m) = m.as_object_mut() {
        m.insert(k, Value::String(v));
    }
    Ok(())
}

fn push_string(obj: &mut Map<String, Value>, name: &str, b: &[u8]) -> Result<()> {
    let s = text(b)?;
    let a = obj.entry(name).or_insert_with(|| json!([]));
    if let Some(a) = a.as_array_mut() {
        a.push(Value::String(s));
    }
    Ok(())
}

fn object_meta(b: &[u8]) -> Result<Value> {
    let mut m = Map::new();
    for (n, f) in fields(b)? {
        if let Field::Bytes(v) = f {
            match n {
                1 => {
                    m.insert("name".into(), Value::String(text(v)?));
                }
                2 => {
                    m.insert("generateName".into(), Value::String(text(v)?));
                }
                3 => {
                    m.insert("namespace".into(), Value::String(text(v)?));
                }
                11 => insert_map(&mut m, "labels", v, false)?,
                12 => insert_map(&mut m, "annotations", v, false)?,
                14 => push_string(&mut m, "finalizers", v)?,
                _ => {}
            }
        }
    }
    Ok(Value::Object(m))
}

/// Decode a protobuf-encoded object of one of the supported kinds into JSON.
pub fn decode(body: &[u8]) -> Result<Value> {
    let payload = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing k8s prefix"))?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, f) in fields(payload)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (n, f) in fields(tm)? {
                    match (n, f) {
                        (1, Field::Bytes(v)) => api_version = text(v)?,
                        (2, Field::Bytes(v)) => kind = text(v)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version.clone()));
    obj.insert("kind".into(), Value::String(kind.clone()));
    if kind == "DeleteOptions" {
        delete_options(&mut obj, raw)?;
        return Ok(Value::Object(obj));
    }
    let supported = api_version == "v1"
        && matches!(
            kind.as_str(),
            "Namespace" | "ConfigMap" | "Secret" | "ServiceAccount"
        );
    if !supported {
        return Err(Error::UnsupportedMediaType(format!(
            "protobuf bodies are only understood for v1 Namespace, ConfigMap, Secret and ServiceAccount (got {api_version}, Kind={kind}); send JSON"
        )));
    }
    for (n, f) in fields(raw)? {
        match (kind.as_str(), n, f) {
            (_, 1, Field::Bytes(v)) => {
                obj.insert("metadata".into(), object_meta(v)?);
            }
            ("Namespace", 2, Field::Bytes(v)) => {
                let mut spec = Map::new();
                for (n, f) in fields(v)? {
                    if let (1, Field::Bytes(s)) = (n, f) {
                        push_string(&mut spec, "finalizers", s)?;
                    }
                }
                obj.insert("spec".into(), Value::Object(spec));
            }
            ("ConfigMap", 2, Field::Bytes(v)) => insert_map(&mut obj, "data", v, false)?,
            ("ConfigMap", 3, Field::Bytes(v)) => insert_map(&mut obj, "binaryData", v, true)?,
            ("ConfigMap", 4, Field::Varint(b)) | ("Secret", 5, Field::Varint(b)) => {
                obj.insert("immutable".into(), Value::Bool(b != 0));
            }
            ("Secret", 2, Field::Bytes(v)) => insert_map(&mut obj, "data", v, true)?,
            ("Secret", 3, Field::Bytes(v)) => {
                obj.insert("type".into(), Value::String(text(v)?));
            }
            ("Secret", 4, Field::Bytes(v)) => insert_map(&mut obj, "stringData", v, false)?,
            ("ServiceAccount", 4, Field::Varint(b)) => {
                obj.insert("automountServiceAccountToken".into(), Value::Bool(b != 0));
            }
            _ => {}
        }
    }
    Ok(Value::Object(obj))
}

/// `meta.k8s.io/v1` DeleteOptions: gracePeriodSeconds = 1, preconditions
/// = 2 (uid = 1, resourceVersion = 2), orphanDependents = 3,
/// propagationPolicy = 4, dryRun = 5.
fn delete_options(obj: &mut Map<String, Value>, raw: &[u8]) -> Result<()> {
    for (n, f) in fields(raw)? {
        match (n, f) {
            // int64 travels as a two's-complement varint.
            (1, Field::Varint(v)) => {
                obj.insert("gracePeriodSeconds".into(), json!(v as i64));
            }
            (2, Field::Bytes(v)) => {
                let mut pre = Map::new();
                for (n, f) in fields(v)? {
                    match (n, f) {
                        (1, Field::Bytes(u)) => {
                            pre.insert("uid".into(), Value::String(text(u)?));
                        }
                        (2, Field::Bytes(r)) => {
                            pre.insert("resourceVersion".into(), Value::String(text(r)?));
                        }
                        _ => {}
                    }
                }
                obj.insert("preconditions".into(), Value::Object(pre));
            }
            (3, Field::Varint(b)) => {
                obj.insert("orphanDependents".into(), Value::Bool(b != 0));
            }
            (4, Field::Bytes(v)) => {
                obj.insert("propagationPolicy".into(), Value::String(text(v)?));
            }
            (5, Field::Bytes(v)) => push_string(obj, "dryRun", v)?,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(n: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        bytes_field(1, k.as_bytes(), &mut e);
        bytes_field(2, v, &mut e);
        e
    }

    fn envelope(kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, kind.as_bytes(), &mut tm);
        let mut body = MAGIC.to_vec();
        bytes_field(1, &tm, &mut body);
        bytes_field(2, raw, &mut body);
        body
    }

    #[test]
    fn decodes_a_configmap() {
        let mut meta = Vec::new();
        bytes_field(1, b"settings", &mut meta);
        bytes_field(11, &entry("app", b"demo"), &mut meta);
        let mut raw = Vec::new();
        bytes_field(1, &meta, &mut raw);
        bytes_field(2, &entry("mode", b"fast"), &mut raw);
        bytes_field(3, &entry("bin", &[0xff, 0x00]), &mut raw);
        varint(4 << 3, &mut raw);
        varint(1, &mut raw);
        let v = decode(&envelope("ConfigMap", &raw)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "settings", "labels": {"app": "demo"}},
                   "data": {"mode": "fast"}, "binaryData": {"bin": "/wA="}, "immutable": true})
        );
    }

    #[test]
    fn decodes_a_secret_and_rejects_others() {
        let mut meta = Vec::new();
        bytes_field(1, b"s", &mut meta);
        let mut raw = Vec::new();
        bytes_field(1, &meta, &mut raw);
        bytes_field(2, &entry("k", b"hello"), &mut raw);
        bytes_field(3, b"Opaque", &mut raw);
        let v = decode(&envelope("Secret", &raw)).unwrap();
        assert_eq!(v["data"]["k"], "aGVsbG8=");
        assert_eq!(v["type"], "Opaque");
        assert_eq!(decode(&envelope("Pod", &raw)).unwrap_err().code(), 415);
        assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code(), 400);
        assert_eq!(decode(b"nope").unwrap_err().code(), 400);
    }

    #[test]
    fn decodes_delete_options() {
        let mut pre = Vec::new();
        bytes_field(1, b"uid-1", &mut pre);
        let mut raw = Vec::new();
        varint(1 << 3, &mut raw);
        varint(30, &mut raw);
        bytes_field(2, &pre, &mut raw);
        bytes_field(4, b"Foreground", &mut raw);
        bytes_field(5, b"All", &mut raw);
        let v = decode(&envelope("DeleteOptions", &raw)).unwrap();
        assert_eq!(v["gracePeriodSeconds"], 30);
        assert_eq!(v["preconditions"], json!({"uid": "uid-1"}));
        assert_eq!(v["propagationPolicy"], "Foreground");
        assert_eq!(v["dryRun"], json!(["All"]));
        let empty = decode(&envelope("DeleteOptions", &[])).unwrap();
        assert!(empty.get("propagationPolicy").is_none());
    }

    #[test]
    fn base64_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }
}
