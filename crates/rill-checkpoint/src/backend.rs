//! Turns a storage URI plus Flink-style options into an `object_store` handle, and
//! maps user-supplied snapshot locations (URIs, absolute paths, relative paths) back
//! to paths relative to the storage root.
//!
//! Supported roots: `file:///abs/dir`, a plain absolute path, and
//! `s3://bucket/prefix` (also `s3a://`). S3 settings come from the standard AWS
//! environment variables (read by `AmazonS3Builder::from_env`) and are overridden by
//! the Flink-style keys `s3.endpoint`, `s3.access-key`, `s3.secret-key`,
//! `s3.region` and `s3.path.style.access`.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, RetryConfig};
use url::Url;

use crate::layout;
use crate::CheckpointError;

/// An opened storage root.
#[derive(Debug)]
pub(crate) struct Backend {
    /// Store whose paths are relative to the root.
    pub store: Arc<dyn ObjectStore>,
    /// Canonical URI of the root, without a trailing slash.
    pub root_uri: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Local {
        /// The root as the caller spelled it (absolute).
        given: PathBuf,
        /// The root after resolving symlinks.
        canonical: PathBuf,
    },
    S3 {
        bucket: String,
        /// Prefix segments inside the bucket (may be empty).
        prefix: Vec<String>,
    },
}

fn invalid(uri: &str, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::InvalidUri {
        uri: uri.to_string(),
        reason: reason.into(),
    }
}

/// Flink option keys understood for S3, with their aliases.
const OPT_ENDPOINT: &[&str] = &["s3.endpoint"];
const OPT_ACCESS_KEY: &[&str] = &["s3.access-key", "s3.access.key"];
const OPT_SECRET_KEY: &[&str] = &["s3.secret-key", "s3.secret.key"];
const OPT_REGION: &[&str] = &["s3.region"];
const OPT_PATH_STYLE: &[&str] = &["s3.path.style.access", "s3.path-style-access"];

fn option<'a>(options: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<(&'a str, &'a str)> {
    keys.iter().find_map(|k| {
        options
            .get_key_value(*k)
            .map(|(k, v)| (k.as_str(), v.as_str()))
    })
}

fn parse_bool(key: &str, value: &str) -> Result<bool, CheckpointError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(CheckpointError::InvalidOption {
            key: key.to_string(),
            reason: format!("expected true or false, got `{value}`"),
        }),
    }
}

impl Backend {
    /// Open a storage root. Building the clients needs no runtime; the local root
    /// directory is created if missing.
    pub fn open(uri: &str, options: &BTreeMap<String, String>) -> Result<Self, CheckpointError> {
        let trimmed = uri.trim();
        if trimmed.is_empty() {
            return Err(invalid(uri, "the URI is empty"));
        }
        if trimmed.starts_with('/') {
            return Self::open_local(uri, PathBuf::from(trimmed));
        }
        let url = match Url::parse(trimmed) {
            Ok(url) => url,
            Err(url::ParseError::RelativeUrlWithoutBase) => {
                return Err(invalid(
                    uri,
                    "relative paths are not supported; use an absolute path, file://, or s3://",
                ))
            }
            Err(e) => return Err(invalid(uri, e.to_string())),
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                uri,
                "query strings and fragments are not supported",
            ));
        }
        match url.scheme() {
            "file" => {
                match url.host_str() {
                    None | Some("") | Some("localhost") => {}
                    Some(host) => {
                        return Err(invalid(
                            uri,
                            format!("file URIs must not name a remote host (`{host}`)"),
                        ))
                    }
                }
                let path = url
                    .to_file_path()
                    .map_err(|()| invalid(uri, "not a valid local file path"))?;
                Self::open_local(uri, path)
            }
            "s3" | "s3a" => Self::open_s3(uri, &url, options),
            other => Err(CheckpointError::UnsupportedScheme {
                scheme: other.to_string(),
                uri: uri.to_string(),
            }),
        }
    }

    fn open_local(uri: &str, path: PathBuf) -> Result<Self, CheckpointError> {
        if !path.is_absolute() {
            return Err(invalid(uri, "local paths must be absolute"));
        }
        if path.to_str().is_none() {
            return Err(invalid(uri, "local path is not valid UTF-8"));
        }
        std::fs::create_dir_all(&path).map_err(|source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let canonical = std::fs::canonicalize(&path).map_err(|source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(&canonical)
            .map_err(|e| invalid(uri, e.to_string()))?
            // Remove directories emptied by `discard`/`retain` (never the root).
            .with_automatic_cleanup(true)
            // A checkpoint is only durable once its bytes and directory entries are.
            .with_fsync(true);
        let root_uri = Url::from_file_path(&canonical)
            .map_err(|()| invalid(uri, "cannot express the root as a file:// URI"))?
            .to_string()
            .trim_end_matches('/')
            .to_string();
        Ok(Backend {
            store: Arc::new(store),
            root_uri,
            kind: Kind::Local {
                given: path,
                canonical,
            },
        })
    }

    fn open_s3(
        uri: &str,
        url: &Url,
        options: &BTreeMap<String, String>,
    ) -> Result<Self, CheckpointError> {
        let bucket = match url.host_str() {
            Some(b) if !b.is_empty() => b.to_string(),
            _ => {
                return Err(invalid(
                    uri,
                    "missing bucket name (expected s3://bucket/prefix)",
                ))
            }
        };
        let mut prefix = Vec::new();
        for seg in url.path().split('/').filter(|s| !s.is_empty()) {
            if seg == "." || seg == ".." {
                return Err(invalid(uri, "`.` and `..` are not allowed in the prefix"));
            }
            prefix.push(seg.to_string());
        }

        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
        if let Some((key, endpoint)) = option(options, OPT_ENDPOINT) {
            let endpoint = endpoint.trim();
            let lower = endpoint.to_ascii_lowercase();
            if !lower.starts_with("http://") && !lower.starts_with("https://") {
                return Err(CheckpointError::InvalidOption {
                    key: key.to_string(),
                    reason: format!("`{endpoint}` must start with http:// or https://"),
                });
            }
            builder = builder.with_endpoint(endpoint);
        }
        if let Some((_, key)) = option(options, OPT_ACCESS_KEY) {
            builder = builder.with_access_key_id(key);
        }
        if let Some((_, secret)) = option(options, OPT_SECRET_KEY) {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some((_, region)) = option(options, OPT_REGION) {
            builder = builder.with_region(region.trim());
        }
        if let Some((key, value)) = option(options, OPT_PATH_STYLE) {
            let path_style = parse_bool(key, value)?;
            builder = builder.with_virtual_hosted_style_request(!path_style);
        }
        // A plain-http endpoint (MinIO, local test servers) must be allowed explicitly.
        let http_endpoint = [AmazonS3ConfigKey::Endpoint, AmazonS3ConfigKey::S3Endpoint]
            .iter()
            .filter_map(|k| builder.get_config_value(k))
            .any(|e| e.trim().to_ascii_lowercase().starts_with("http://"));
        if http_endpoint {
            builder = builder.with_allow_http(true);
        }
        builder = builder.with_retry(RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
            ..RetryConfig::default()
        });
        let s3 = builder
            .build()
            .map_err(|e| invalid(uri, format!("cannot configure the S3 client: {e}")))?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            let p = Path::parse(prefix.join("/"))
                .map_err(|e| invalid(uri, format!("invalid prefix: {e}")))?;
            Arc::new(PrefixStore::new(s3, p))
        };
        let mut root_uri = format!("s3://{bucket}");
        for seg in &prefix {
            root_uri.push('/');
            root_uri.push_str(seg);
        }
        Ok(Backend {
            store,
            root_uri,
            kind: Kind::S3 { bucket, prefix },
        })
    }

    /// The URI of a path relative to the root.
    pub fn uri_of(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.root_uri.clone()
        } else {
            format!("{}/{}", self.root_uri, rel)
        }
    }

    /// Map a user-supplied location to a normalised path relative to the root.
    pub fn resolve(&self, location: &str) -> Result<String, CheckpointError> {
        let loc = location.trim();
        let bad = |reason: String| CheckpointError::InvalidLocation {
            location: location.to_string(),
            reason,
        };
        let outside = || CheckpointError::OutsideRoot {
            location: location.to_string(),
            root: self.root_uri.clone(),
        };
        if loc.is_empty() {
            return Err(bad("the location is empty".to_string()));
        }
        let raw_rel: String = if loc.starts_with('/') {
            match &self.kind {
                Kind::Local { given, canonical } => self
                    .strip_local(FsPath::new(loc), given, canonical)
                    .ok_or_else(outside)?,
                Kind::S3 { .. } => return Err(outside()),
            }
        } else if loc.contains("://") {
            let url = Url::parse(loc).map_err(|e| bad(e.to_string()))?;
            match (url.scheme(), &self.kind) {
                ("file", Kind::Local { given, canonical }) => {
                    let path = url
                        .to_file_path()
                        .map_err(|()| bad("not a valid local file path".to_string()))?;
                    self.strip_local(&path, given, canonical)
                        .ok_or_else(outside)?
                }
                ("s3" | "s3a", Kind::S3 { bucket, prefix }) => {
                    if url.host_str() != Some(bucket.as_str()) {
                        return Err(outside());
                    }
                    let segs: Vec<&str> = url.path().split('/').filter(|s| !s.is_empty()).collect();
                    if segs.len() < prefix.len()
                        || segs
                            .iter()
                            .zip(prefix.iter())
                            .any(|(a, b)| *a != b.as_str())
                    {
                        return Err(outside());
                    }
                    segs[prefix.len()..].join("/")
                }
                _ => return Err(outside()),
            }
        } else {
            loc.to_string()
        };
        layout::normalize_relative(&raw_rel).map_err(bad)
    }

    fn strip_local(&self, path: &FsPath, given: &FsPath, canonical: &FsPath) -> Option<String> {
        let candidates = [
            path.to_path_buf(),
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        ];
        for p in &candidates {
            for root in [canonical, given] {
                if let Ok(rest) = p.strip_prefix(root) {
                    let mut segs = Vec::new();
                    for c in rest.components() {
                        match c {
                            std::path::Component::Normal(s) => segs.push(s.to_str()?.to_string()),
                            std::path::Component::CurDir => {}
                            _ => return None,
                        }
                    }
                    return Some(segs.join("/"));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_opts() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn rejects_unsupported_and_bad_uris() {
        for (uri, want) in [
            ("", "empty"),
            ("relative/dir", "relative"),
            ("file://otherhost/x", "remote host"),
            ("s3:///prefix", "bucket"),
            ("s3://bucket/p?x=1", "query"),
        ] {
            match Backend::open(uri, &no_opts()) {
                Err(CheckpointError::InvalidUri { reason, .. }) => {
                    assert!(reason.contains(want), "{uri}: {reason}")
                }
                other => panic!("{uri}: unexpected {other:?}"),
            }
        }
        for uri in ["gs://b/p", "hdfs://nn/x", "http://host/x"] {
            assert!(
                matches!(
                    Backend::open(uri, &no_opts()),
                    Err(CheckpointError::UnsupportedScheme { .. })
                ),
                "{uri}"
            );
        }
    }

    #[test]
    fn endpoint_needs_a_scheme() {
        let mut opts = no_opts();
        opts.insert("s3.endpoint".into(), "127.0.0.1:9000".into());
        match Backend::open("s3://bucket/p", &opts) {
            Err(CheckpointError::InvalidOption { key, reason }) => {
                assert_eq!(key, "s3.endpoint");
                assert!(reason.contains("http://"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_path_style_value_is_an_option_error() {
        let mut opts = no_opts();
        opts.insert("s3.path.style.access".into(), "maybe".into());
        match Backend::open("s3://bucket/p", &opts) {
            Err(CheckpointError::InvalidOption { key, .. }) => {
                assert_eq!(key, "s3.path.style.access")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn s3_root_and_locations() {
        let mut opts = no_opts();
        opts.insert("s3.endpoint".into(), "http://127.0.0.1:9".into());
        opts.insert("s3.access-key".into(), "ak".into());
        opts.insert("s3.secret-key".into(), "sk".into());
        opts.insert("s3.path.style.access".into(), "true".into());
        let b = Backend::open("s3://bucket/some/prefix/", &opts).expect("opens");
        assert_eq!(b.root_uri, "s3://bucket/some/prefix");
        assert_eq!(b.uri_of("job/chk-1"), "s3://bucket/some/prefix/job/chk-1");
        assert_eq!(
            b.resolve("s3://bucket/some/prefix/job/chk-1/")
                .expect("resolves"),
            "job/chk-1"
        );
        assert_eq!(
            b.resolve("s3a://bucket/some/prefix/job/chk-1/_metadata")
                .expect("resolves"),
            "job/chk-1"
        );
        assert_eq!(b.resolve("job/chk-1").expect("resolves"), "job/chk-1");
        assert!(matches!(
            b.resolve("s3://other/some/prefix/job"),
            Err(CheckpointError::OutsideRoot { .. })
        ));
        assert!(matches!(
            b.resolve("s3://bucket/some/other/job"),
            Err(CheckpointError::OutsideRoot { .. })
        ));
        assert!(matches!(
            b.resolve("/abs/job"),
            Err(CheckpointError::OutsideRoot { .. })
        ));
        assert!(matches!(
            b.resolve("job/../x"),
            Err(CheckpointError::InvalidLocation { .. })
        ));
    }

    #[test]
    fn local_root_and_locations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("ckpt");
        let root_str = root.to_str().expect("utf8");
        let b = Backend::open(&format!("file://{root_str}"), &no_opts()).expect("opens");
        assert!(root.is_dir(), "root is created");
        assert!(b.root_uri.starts_with("file:///"), "{}", b.root_uri);
        let chk = format!("{root_str}/job/chk-2");
        assert_eq!(b.resolve(&chk).expect("path"), "job/chk-2");
        assert_eq!(b.resolve(&b.uri_of("job/chk-2")).expect("uri"), "job/chk-2");
        assert_eq!(b.resolve("job/chk-2").expect("rel"), "job/chk-2");
        assert!(matches!(
            b.resolve("/definitely/elsewhere/job"),
            Err(CheckpointError::OutsideRoot { .. })
        ));
        assert!(matches!(
            b.resolve("s3://bucket/job"),
            Err(CheckpointError::OutsideRoot { .. })
        ));
        // A plain absolute path opens the same root.
        let b2 = Backend::open(root_str, &no_opts()).expect("opens");
        assert_eq!(b2.root_uri, b.root_uri);
    }
}
