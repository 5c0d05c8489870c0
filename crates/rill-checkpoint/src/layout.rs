//! The one place that knows how checkpoints and savepoints are laid out in storage.
//!
//! Everything here is a pure function over strings so it can be unit tested without
//! any store. Paths are relative to the storage root and use `/` separators:
//!
//! ```text
//! <job-id>/chk-<n>/<uid-escaped>-<subtask>.state
//! <job-id>/chk-<n>/<uid-escaped>-<subtask>.native/<file>      native RocksDB files
//! <job-id>/shared/<uid-escaped>-<subtask>-<db-id>/<n>-<file>  SST files of incremental checkpoints
//! <job-id>/chk-<n>/_metadata
//! savepoints/savepoint-<job-id>-<n>-<random>/<uid-escaped>-<subtask>.state
//! savepoints/savepoint-<job-id>-<n>-<random>/_metadata
//! ```
//!
//! A snapshot directory is complete only when its `_metadata` exists and is valid; it
//! is always written last.
//!
//! Shared files are named after the checkpoint `<n>` that uploaded them, so that
//! retention can tell a file no retained checkpoint references (delete it) from one
//! a checkpoint still in progress has just uploaded (`<n>` newer than every
//! complete checkpoint: keep it).

use crate::{CheckpointError, CheckpointId};

/// Name of the metadata file inside every snapshot directory.
pub const METADATA_FILE: &str = "_metadata";
/// Top-level directory (under the root) that holds all savepoints.
pub const SAVEPOINTS_DIR: &str = "savepoints";
/// Prefix of checkpoint directory names.
pub const CHECKPOINT_PREFIX: &str = "chk-";
/// Prefix of savepoint directory names.
pub const SAVEPOINT_PREFIX: &str = "savepoint-";
/// Extension of state files.
pub const STATE_SUFFIX: &str = ".state";

/// Directory (under the job directory) of files shared between checkpoints.
pub const SHARED_DIR: &str = "shared";
/// Extension of the directory holding a subtask's native files in a snapshot.
pub const NATIVE_SUFFIX: &str = ".native";

/// Escaped uids longer than this are shortened and suffixed with a hash so the file
/// name stays well under common 255-byte file-name limits. The metadata records the
/// real uid, so readers never need to reverse a shortened name.
const MAX_ESCAPED_UID: usize = 120;
const SHORTENED_UID_KEEP: usize = 96;

/// Check a job id before it becomes a directory name.
pub fn validate_job_id(job_id: &str) -> Result<(), CheckpointError> {
    let bad = |reason: &str| CheckpointError::InvalidJobId {
        job_id: job_id.to_string(),
        reason: reason.to_string(),
    };
    if job_id.is_empty() {
        return Err(bad("must not be empty"));
    }
    if job_id == "." || job_id == ".." {
        return Err(bad("must not be `.` or `..`"));
    }
    if job_id == SAVEPOINTS_DIR {
        return Err(bad("`savepoints` is reserved for the savepoint directory"));
    }
    if job_id.len() > 128 {
        return Err(bad("must be at most 128 bytes"));
    }
    if let Some(c) = job_id
        .chars()
        .find(|c| c.is_control() || matches!(c, '/' | '\\' | '#' | '%'))
    {
        return Err(bad(&format!("must not contain {c:?}")));
    }
    Ok(())
}

/// Escape an operator uid into a file-name-safe string.
///
/// ASCII letters, digits, `_`, `-` and `.` are kept; every other byte of the UTF-8
/// encoding becomes `~XX` (upper-case hex). The result is reversible with
/// [`unescape_uid`] unless it was longer than a file name should be, in which case it
/// is cut and suffixed with `~h` plus a 64-bit FNV-1a hash of the full uid (still
/// unique in practice, but not reversible).
pub fn escape_uid(uid: &str) -> String {
    let mut out = String::with_capacity(uid.len());
    for b in uid.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    // A name that is only dots would be a special path segment; escape the first dot.
    if !out.is_empty() && out.bytes().all(|b| b == b'.') {
        out.replace_range(0..1, "~2E");
    }
    if out.len() > MAX_ESCAPED_UID {
        let mut cut = SHORTENED_UID_KEEP;
        // Do not split an `~XX` escape.
        while let Some(pos) = out[..cut].rfind('~') {
            if pos + 3 > cut {
                cut = pos;
            } else {
                break;
            }
        }
        out.truncate(cut);
        out.push_str(&format!("~h{:016x}", fnv1a(uid.as_bytes())));
    }
    out
}

/// Reverse [`escape_uid`]. Returns `None` for strings that are not a valid escape or
/// that were shortened with a hash.
pub fn unescape_uid(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'~' {
            let hex = escaped.get(i + 1..i + 3)?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `chk-<n>`
pub fn checkpoint_dir_name(id: CheckpointId) -> String {
    format!("{CHECKPOINT_PREFIX}{id}")
}

/// Parse a `chk-<n>` directory name. Leading zeros and signs are rejected so every id
/// has exactly one directory name.
pub fn parse_checkpoint_dir_name(name: &str) -> Option<CheckpointId> {
    let digits = name.strip_prefix(CHECKPOINT_PREFIX)?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// `<job-id>`
pub fn job_dir(job_id: &str) -> String {
    job_id.to_string()
}

/// `<job-id>/chk-<n>`
pub fn checkpoint_dir(job_id: &str, id: CheckpointId) -> String {
    format!("{}/{}", job_dir(job_id), checkpoint_dir_name(id))
}

/// `savepoint-<job-id>-<n>-<random>`
pub fn savepoint_dir_name(job_id: &str, id: CheckpointId, random: &str) -> String {
    format!("{SAVEPOINT_PREFIX}{job_id}-{id}-{random}")
}

/// `savepoints/savepoint-<job-id>-<n>-<random>`
pub fn savepoint_dir(job_id: &str, id: CheckpointId, random: &str) -> String {
    format!(
        "{SAVEPOINTS_DIR}/{}",
        savepoint_dir_name(job_id, id, random)
    )
}

/// `<dir>/_metadata`
pub fn metadata_path(snapshot_dir: &str) -> String {
    join(snapshot_dir, METADATA_FILE)
}

/// `<uid-escaped>-<subtask>.state`
pub fn state_file_name(uid: &str, subtask: usize) -> String {
    format!("{}-{subtask}{STATE_SUFFIX}", escape_uid(uid))
}

/// `<dir>/<uid-escaped>-<subtask>.native`: a subtask's native files kept
/// with one snapshot only.
pub fn native_dir(snapshot_dir: &str, uid: &str, subtask: usize) -> String {
    join(
        snapshot_dir,
        &format!("{}-{subtask}{NATIVE_SUFFIX}", escape_uid(uid)),
    )
}

/// `<job-id>/shared`
pub fn shared_dir(job_id: &str) -> String {
    join(&job_dir(job_id), SHARED_DIR)
}

/// `<job-id>/shared/<uid-escaped>-<subtask>-<db-id>/<n>-<file>`: a file that
/// checkpoint `<n>` uploaded and later checkpoints may reference.
pub fn shared_file_path(
    job_id: &str,
    uid: &str,
    subtask: usize,
    db_id: &str,
    checkpoint: CheckpointId,
    file: &str,
) -> String {
    format!(
        "{}/{}-{subtask}-{}/{checkpoint}-{file}",
        shared_dir(job_id),
        escape_uid(uid),
        escape_uid(db_id)
    )
}

/// Whether `path` lies in the shared directory of `job_id`.
pub fn is_shared_path(job_id: &str, path: &str) -> bool {
    path.strip_prefix(&shared_dir(job_id))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// The checkpoint that uploaded a shared file, from the file's name.
pub fn shared_file_checkpoint(path: &str) -> Option<CheckpointId> {
    let name = path.rsplit('/').next()?;
    let (id, rest) = name.split_once('-')?;
    if rest.is_empty() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// Split a state file name into its escaped uid and subtask (split at the last `-`).
pub fn parse_state_file_name(name: &str) -> Option<(&str, usize)> {
    let stem = name.strip_suffix(STATE_SUFFIX)?;
    let (uid, subtask) = stem.rsplit_once('-')?;
    if subtask.is_empty() || !subtask.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((uid, subtask.parse().ok()?))
}

/// A state file name recorded in metadata must be one plain path segment; anything
/// else (e.g. `../x`) would let corrupt metadata point outside its directory.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name != METADATA_FILE
        && !name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
}

/// Join two relative paths with `/`, tolerating an empty left side (the root).
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Normalise a relative location: drop empty segments, a trailing `_metadata`, and
/// reject `.`/`..` segments.
pub fn normalize_relative(path: &str) -> Result<String, String> {
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" => {}
            "." | ".." => return Err(format!("path segment `{seg}` is not allowed")),
            s if s.chars().any(|c| c.is_control()) => {
                return Err("control characters are not allowed".to_string())
            }
            s => segments.push(s),
        }
    }
    if segments.last() == Some(&METADATA_FILE) {
        segments.pop();
    }
    Ok(segments.join("/"))
}

/// What a (normalised, relative) location names, judged by its shape alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocationShape {
    /// `<job-id>/chk-<n>`
    Checkpoint { job_id: String, id: CheckpointId },
    /// `savepoints/savepoint-…`
    Savepoint { name: String },
    /// `<job-id>`
    Job { job_id: String },
    /// Anything else (e.g. the root itself, or deeper paths).
    Other,
}

/// Classify a normalised relative location.
pub fn classify(rel: &str) -> LocationShape {
    let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [SAVEPOINTS_DIR, name] if name.starts_with(SAVEPOINT_PREFIX) => LocationShape::Savepoint {
            name: (*name).to_string(),
        },
        [job, chk] if *job != SAVEPOINTS_DIR => match parse_checkpoint_dir_name(chk) {
            Some(id) => LocationShape::Checkpoint {
                job_id: (*job).to_string(),
                id,
            },
            None => LocationShape::Other,
        },
        [job] if *job != SAVEPOINTS_DIR => LocationShape::Job {
            job_id: (*job).to_string(),
        },
        _ => LocationShape::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_paths() {
        assert_eq!(checkpoint_dir("job-1", 7), "job-1/chk-7");
        assert_eq!(metadata_path("job-1/chk-7"), "job-1/chk-7/_metadata");
        assert_eq!(
            savepoint_dir("job-1", 3, "a1b2c3d4"),
            "savepoints/savepoint-job-1-3-a1b2c3d4"
        );
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("a/b", "x"), "a/b/x");
    }

    #[test]
    fn native_and_shared_paths() {
        assert_eq!(
            native_dir("job/chk-3", "op#rocksdb", 1),
            "job/chk-3/op~23rocksdb-1.native"
        );
        let shared = shared_file_path("job", "op#rocksdb", 1, "00ff", 7, "000012.sst");
        assert_eq!(shared, "job/shared/op~23rocksdb-1-00ff/7-000012.sst");
        assert!(is_shared_path("job", &shared));
        assert!(!is_shared_path("job", "job/sharedx/a"));
        assert!(!is_shared_path("jo", &shared));
        assert_eq!(shared_file_checkpoint(&shared), Some(7));
        assert_eq!(shared_file_checkpoint("job/shared/x/000012.sst"), None);
        assert_eq!(shared_file_checkpoint("job/shared/x/7-"), None);
    }

    #[test]
    fn checkpoint_dir_names_round_trip() {
        for id in [0u64, 1, 9, 10, 12345, u64::MAX] {
            assert_eq!(
                parse_checkpoint_dir_name(&checkpoint_dir_name(id)),
                Some(id)
            );
        }
        for bad in [
            "chk-",
            "chk-01",
            "chk--1",
            "chk-+1",
            "chk-1a",
            "chk-18446744073709551616",
            "ckp-1",
            "savepoint-1",
        ] {
            assert_eq!(parse_checkpoint_dir_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn uid_escape_is_reversible_and_safe() {
        for uid in [
            "map",
            "Source: kafka-1",
            "a/b\\c",
            "..",
            ".",
            "",
            "ünïcödé→𝔘",
            "x~41",
            "tab\there",
            "a-1",
            "#1",
        ] {
            let e = escape_uid(uid);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~')),
                "{uid:?} -> {e:?}"
            );
            assert!(is_plain_file_name(&state_file_name(uid, 0)), "{uid:?}");
            assert_eq!(unescape_uid(&e).as_deref(), Some(uid), "{uid:?} -> {e:?}");
        }
        assert_eq!(escape_uid("Source: kafka"), "Source~3A~20kafka");
        assert_eq!(escape_uid(".."), "~2E.");
    }

    #[test]
    fn distinct_uids_get_distinct_names() {
        let uids = ["a b", "a~20b", "a_b", "a-b", "a.b", "A b"];
        let names: std::collections::BTreeSet<String> =
            uids.iter().map(|u| escape_uid(u)).collect();
        assert_eq!(names.len(), uids.len());
    }

    #[test]
    fn long_uids_are_shortened_with_a_hash() {
        let a = "é".repeat(200);
        let b = format!("{}x", "é".repeat(199));
        let ea = escape_uid(&a);
        let eb = escape_uid(&b);
        assert!(ea.len() <= MAX_ESCAPED_UID, "{}", ea.len());
        assert_ne!(ea, eb);
        assert!(ea.contains("~h"));
        assert_eq!(unescape_uid(&ea), None);
        // The cut never splits an escape sequence.
        let stem = ea.split("~h").next().unwrap_or_default();
        assert!(unescape_uid(stem).is_some(), "{stem}");
    }

    #[test]
    fn state_file_names_parse_back() {
        let name = state_file_name("my-op", 12);
        assert_eq!(name, "my-op-12.state");
        assert_eq!(parse_state_file_name(&name), Some(("my-op", 12)));
        assert_eq!(parse_state_file_name("x-.state"), None);
        assert_eq!(parse_state_file_name("x-1.txt"), None);
        assert_eq!(parse_state_file_name("x1.state"), None);
    }

    #[test]
    fn plain_file_names() {
        assert!(is_plain_file_name("a-0.state"));
        for bad in ["", ".", "..", "../x", "a/b", "_metadata", "a\u{0}"] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn job_ids_are_validated() {
        assert!(validate_job_id("3f2a-job_1.x").is_ok());
        for bad in ["", ".", "..", "savepoints", "a/b", "a\nb", "a#1", "a%20"] {
            assert!(validate_job_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_job_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn relative_locations_normalise() {
        assert_eq!(
            normalize_relative("/job/chk-3/").as_deref(),
            Ok("job/chk-3")
        );
        assert_eq!(
            normalize_relative("job//chk-3/_metadata").as_deref(),
            Ok("job/chk-3")
        );
        assert_eq!(normalize_relative("").as_deref(), Ok(""));
        assert!(normalize_relative("job/../x").is_err());
        assert!(normalize_relative("./job").is_err());
    }

    #[test]
    fn locations_are_classified() {
        assert_eq!(
            classify("job/chk-4"),
            LocationShape::Checkpoint {
                job_id: "job".into(),
                id: 4
            }
        );
        assert_eq!(
            classify("savepoints/savepoint-job-4-abc"),
            LocationShape::Savepoint {
                name: "savepoint-job-4-abc".into()
            }
        );
        assert_eq!(
            classify("job"),
            LocationShape::Job {
                job_id: "job".into()
            }
        );
        assert_eq!(classify(""), LocationShape::Other);
        assert_eq!(classify("savepoints"), LocationShape::Other);
        assert_eq!(classify("job/chk-x"), LocationShape::Other);
        assert_eq!(classify("a/b/c"), LocationShape::Other);
    }
}
