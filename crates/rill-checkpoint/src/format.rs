//! On-storage encodings: the binary state file and the JSON `_metadata`.
//!
//! State files use a small hand-written little-endian format so that decoding
//! untrusted bytes is bounds-checked everywhere and never allocates more than the
//! input holds (a corrupt length cannot make us allocate gigabytes or panic):
//!
//! ```text
//! magic   "RILLSTA1"                       8 bytes
//! uid     u32 length + UTF-8 bytes
//! subtask u64
//! keyed   u64 count, then per entry: u64 key group, u64 length, bytes
//! operator u8 (0 = none, 1 = present), then u64 length + bytes when present
//! ```
//!
//! Each file's size and CRC32 are recorded in `_metadata`, which is JSON so that
//! people and tools can inspect a checkpoint.
//!
//! A native RocksDB snapshot of a subtask is described in `_metadata` itself
//! ([`NativeMetadata`] on the subtask's state file entry): its key-group
//! range, its tables, and every database file with the path it lies under
//! (in the checkpoint's own directory, or in the job's `shared/` directory
//! when an incremental checkpoint shares it with others), its size and its
//! CRC32. Keeping the file lists in `_metadata` lets retention count
//! references to shared files from metadata alone.

use serde::{Deserialize, Serialize};

use crate::{CheckpointId, SnapshotKind};

/// Version of the `_metadata` format written by this build for snapshots
/// whose state is all in state files.
pub const METADATA_FORMAT_VERSION: u32 = 1;
/// Version written when a snapshot holds native RocksDB files (a `native`
/// entry on a state file); the newest version this build reads.
pub const NATIVE_METADATA_FORMAT_VERSION: u32 = 2;

const STATE_MAGIC: &[u8; 8] = b"RILLSTA1";

/// The decoded content of one state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    pub uid: String,
    pub subtask: usize,
    pub keyed: Vec<(usize, Vec<u8>)>,
    pub operator: Option<Vec<u8>>,
}

/// Encode a state file.
pub fn encode_state_file(
    uid: &str,
    subtask: usize,
    keyed: &[(usize, Vec<u8>)],
    operator: Option<&[u8]>,
) -> Vec<u8> {
    let payload: usize = keyed.iter().map(|(_, b)| 16 + b.len()).sum::<usize>()
        + operator.map_or(0, |b| b.len() + 8);
    let mut out = Vec::with_capacity(8 + 4 + uid.len() + 8 + 8 + payload + 1);
    out.extend_from_slice(STATE_MAGIC);
    // uids are operator names; anything near 4 GiB is a bug upstream, and
    // `write` rejects it before we get here.
    out.extend_from_slice(&(uid.len() as u32).to_le_bytes());
    out.extend_from_slice(uid.as_bytes());
    out.extend_from_slice(&(subtask as u64).to_le_bytes());
    out.extend_from_slice(&(keyed.len() as u64).to_le_bytes());
    for (kg, blob) in keyed {
        out.extend_from_slice(&(*kg as u64).to_le_bytes());
        out.extend_from_slice(&(blob.len() as u64).to_le_bytes());
        out.extend_from_slice(blob);
    }
    match operator {
        None => out.push(0),
        Some(blob) => {
            out.push(1);
            out.extend_from_slice(&(blob.len() as u64).to_le_bytes());
            out.extend_from_slice(blob);
        }
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "truncated: need {n} bytes for {what} at offset {}, only {} left",
                    self.pos,
                    self.buf.len() - self.pos
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }

    fn usize(&mut self, what: &str) -> Result<usize, String> {
        let v = self.u64(what)?;
        usize::try_from(v).map_err(|_| format!("{what} {v} does not fit this platform"))
    }

    fn bytes(&mut self, what: &str) -> Result<Vec<u8>, String> {
        let len = self.usize(what)?;
        Ok(self.take(len, what)?.to_vec())
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Decode a state file; every malformed input is an `Err` with a reason.
pub fn decode_state_file(buf: &[u8]) -> Result<StateFile, String> {
    let mut r = Reader { buf, pos: 0 };
    let magic = r.take(STATE_MAGIC.len(), "magic")?;
    if magic != STATE_MAGIC {
        return Err(format!("bad magic {magic:02x?}, expected \"RILLSTA1\""));
    }
    let uid_len = r.u32("uid length")? as usize;
    let uid = std::str::from_utf8(r.take(uid_len, "uid")?)
        .map_err(|e| format!("uid is not UTF-8: {e}"))?
        .to_string();
    let subtask = r.usize("subtask")?;
    let count = r.usize("key group count")?;
    // Every entry needs at least 16 bytes; a larger count is corrupt, and checking it
    // up front keeps `with_capacity` bounded by the input size.
    if count > r.remaining() / 16 {
        return Err(format!(
            "key group count {count} cannot fit in the {} remaining bytes",
            r.remaining()
        ));
    }
    let mut keyed = Vec::with_capacity(count);
    for _ in 0..count {
        let kg = r.usize("key group")?;
        let blob = r.bytes("key group state")?;
        keyed.push((kg, blob));
    }
    let operator = match r.u8("operator state flag")? {
        0 => None,
        1 => Some(r.bytes("operator state")?),
        other => return Err(format!("bad operator state flag {other}")),
    };
    if r.remaining() != 0 {
        return Err(format!("{} trailing bytes after the state", r.remaining()));
    }
    Ok(StateFile {
        uid,
        subtask,
        keyed,
        operator,
    })
}

/// CRC32 (IEEE) of a byte string, as recorded in `_metadata`.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The JSON document stored as `_metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub format_version: u32,
    pub job_id: String,
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    pub created_ms: u64,
    pub operators: Vec<OperatorMetadata>,
}

/// One operator's entry in `_metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorMetadata {
    pub uid: String,
    pub parallelism: usize,
    pub max_parallelism: usize,
    pub files: Vec<FileMetadata>,
}

/// One state file's entry in `_metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMetadata {
    pub subtask: usize,
    pub file: String,
    pub size: u64,
    pub crc32: u32,
    /// The subtask's native RocksDB snapshot, if it reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeMetadata>,
}

/// A native RocksDB snapshot of one subtask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeMetadata {
    /// Identity of the database instance the files come from.
    pub db_id: String,
    /// First and last key group the database holds.
    pub key_group_start: usize,
    pub key_group_end: usize,
    /// Whether SST files were shared with other checkpoints.
    pub incremental: bool,
    pub tables: Vec<NativeTableMetadata>,
    pub files: Vec<NativeFileMetadata>,
}

/// A state table (column family) of a native snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeTableMetadata {
    pub name: String,
    pub type_name: String,
    pub ttl_ms: Option<i64>,
}

/// One database file of a native snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeFileMetadata {
    /// Name in the database directory.
    pub name: String,
    /// Where it lies, relative to the storage root.
    pub path: String,
    pub size: u64,
    pub crc32: u32,
}

/// Encode metadata as pretty JSON.
pub fn encode_metadata(meta: &Metadata) -> Vec<u8> {
    // Serialising plain structs of strings and integers cannot fail.
    serde_json::to_vec_pretty(meta).unwrap_or_else(|e| {
        unreachable!("metadata serialisation cannot fail: {e}");
    })
}

/// Why `_metadata` could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    /// Not decodable, or self-inconsistent.
    Corrupt(String),
    /// A format version this build does not read.
    UnsupportedVersion(u32),
}

/// Decode and sanity-check `_metadata`.
pub fn decode_metadata(bytes: &[u8]) -> Result<Metadata, MetadataError> {
    // Look at the version first so a newer format is reported as such rather than as
    // "unknown field".
    #[derive(Deserialize)]
    struct VersionOnly {
        format_version: u32,
    }
    let version: VersionOnly =
        serde_json::from_slice(bytes).map_err(|e| MetadataError::Corrupt(e.to_string()))?;
    if !(METADATA_FORMAT_VERSION..=NATIVE_METADATA_FORMAT_VERSION).contains(&version.format_version)
    {
        return Err(MetadataError::UnsupportedVersion(version.format_version));
    }
    let meta: Metadata =
        serde_json::from_slice(bytes).map_err(|e| MetadataError::Corrupt(e.to_string()))?;
    validate_metadata(&meta).map_err(MetadataError::Corrupt)?;
    Ok(meta)
}

fn validate_metadata(meta: &Metadata) -> Result<(), String> {
    let mut uids = std::collections::BTreeSet::new();
    let mut files = std::collections::BTreeSet::new();
    for op in &meta.operators {
        if !uids.insert(op.uid.as_str()) {
            return Err(format!("operator `{}` listed twice", op.uid));
        }
        if op.parallelism == 0 || op.max_parallelism == 0 {
            return Err(format!(
                "operator `{}` has parallelism {} / max parallelism {}",
                op.uid, op.parallelism, op.max_parallelism
            ));
        }
        let mut subtasks = std::collections::BTreeSet::new();
        for f in &op.files {
            if f.subtask >= op.parallelism {
                return Err(format!(
                    "operator `{}` lists subtask {} but has parallelism {}",
                    op.uid, f.subtask, op.parallelism
                ));
            }
            if !subtasks.insert(f.subtask) {
                return Err(format!(
                    "operator `{}` lists subtask {} twice",
                    op.uid, f.subtask
                ));
            }
            if !crate::layout::is_plain_file_name(&f.file) {
                return Err(format!("state file name {:?} is not allowed", f.file));
            }
            if !files.insert(f.file.as_str()) {
                return Err(format!("state file `{}` listed twice", f.file));
            }
            if let Some(native) = &f.native {
                if meta.format_version < NATIVE_METADATA_FORMAT_VERSION {
                    return Err(format!(
                        "state file `{}` has native files, which format version {} cannot hold",
                        f.file, meta.format_version
                    ));
                }
                validate_native(native, op.max_parallelism)
                    .map_err(|reason| format!("native snapshot of `{}`: {reason}", f.file))?;
            }
        }
    }
    Ok(())
}

pub(crate) fn validate_native(
    native: &NativeMetadata,
    max_parallelism: usize,
) -> Result<(), String> {
    if native.key_group_start > native.key_group_end || native.key_group_end >= max_parallelism {
        return Err(format!(
            "key groups {}..={} do not fit max parallelism {max_parallelism}",
            native.key_group_start, native.key_group_end
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for f in &native.files {
        if !crate::layout::is_plain_file_name(&f.name) {
            return Err(format!("file name {:?} is not allowed", f.name));
        }
        if !names.insert(f.name.as_str()) {
            return Err(format!("file `{}` listed twice", f.name));
        }
        if f.path.is_empty() || crate::layout::normalize_relative(&f.path).as_deref() != Ok(&f.path)
        {
            return Err(format!("file path {:?} is not allowed", f.path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_meta() -> Metadata {
        Metadata {
            format_version: METADATA_FORMAT_VERSION,
            job_id: "job".into(),
            id: 42,
            kind: SnapshotKind::Savepoint,
            created_ms: 1_700_000_000_000,
            operators: vec![OperatorMetadata {
                uid: "Source: x".into(),
                parallelism: 2,
                max_parallelism: 128,
                files: vec![
                    FileMetadata {
                        subtask: 0,
                        file: "Source~3A~20x-0.state".into(),
                        size: 10,
                        crc32: 0xdead_beef,
                        native: None,
                    },
                    FileMetadata {
                        subtask: 1,
                        file: "Source~3A~20x-1.state".into(),
                        size: 11,
                        crc32: 7,
                        native: None,
                    },
                ],
            }],
        }
    }

    #[test]
    fn state_file_round_trip() {
        let keyed = vec![(0usize, vec![1u8, 2, 3]), (127, vec![]), (5, vec![9; 1000])];
        let bytes = encode_state_file("op/ü", 3, &keyed, Some(&[7, 7]));
        let decoded = decode_state_file(&bytes).expect("decodes");
        assert_eq!(
            decoded,
            StateFile {
                uid: "op/ü".into(),
                subtask: 3,
                keyed,
                operator: Some(vec![7, 7]),
            }
        );
        let empty = encode_state_file("", 0, &[], None);
        assert_eq!(
            decode_state_file(&empty).expect("decodes"),
            StateFile {
                uid: String::new(),
                subtask: 0,
                keyed: vec![],
                operator: None
            }
        );
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        let bytes = encode_state_file("op", 1, &[(3, vec![1, 2, 3])], Some(&[4]));
        for len in 0..bytes.len() {
            assert!(decode_state_file(&bytes[..len]).is_err(), "prefix {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_state_file(&longer).unwrap_err().contains("trailing"));
    }

    #[test]
    fn huge_lengths_do_not_allocate_or_panic() {
        let mut bytes = encode_state_file("op", 1, &[(3, vec![1, 2, 3])], None);
        // key group count lives right after magic(8) + uid len(4) + uid(2) + subtask(8)
        let at = 8 + 4 + 2 + 8;
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_state_file(&bytes).is_err());
        // blob length of the first entry
        let mut bytes = encode_state_file("op", 1, &[(3, vec![1, 2, 3])], None);
        let at = 8 + 4 + 2 + 8 + 8 + 8;
        bytes[at..at + 8].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert!(decode_state_file(&bytes).is_err());
        // uid length
        let mut bytes = encode_state_file("op", 1, &[], None);
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_state_file(&bytes).is_err());
    }

    #[test]
    fn single_byte_corruption_never_panics() {
        let bytes = encode_state_file("op", 1, &[(3, vec![1, 2, 3]), (4, vec![])], Some(&[4]));
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let _ = decode_state_file(&b);
            }
        }
        assert!(decode_state_file(b"NOTMAGIC")
            .unwrap_err()
            .contains("magic"));
    }

    #[test]
    fn checksum_detects_a_flip() {
        let a = encode_state_file("op", 0, &[(1, vec![1, 2, 3])], None);
        let mut b = a.clone();
        b[a.len() - 2] ^= 1;
        assert_ne!(checksum(&a), checksum(&b));
    }

    #[test]
    fn metadata_round_trip() {
        let meta = sample_meta();
        let bytes = encode_metadata(&meta);
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert!(text.contains("\"kind\": \"savepoint\""), "{text}");
        assert!(text.contains("\"format_version\": 1"), "{text}");
        assert_eq!(decode_metadata(&bytes), Ok(meta));
    }

    #[test]
    fn truncated_metadata_is_corrupt() {
        let bytes = encode_metadata(&sample_meta());
        for len in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(
                    decode_metadata(&bytes[..len]),
                    Err(MetadataError::Corrupt(_))
                ),
                "len {len}"
            );
        }
        assert!(matches!(
            decode_metadata(&[0xff, 0xfe, 0x00]),
            Err(MetadataError::Corrupt(_))
        ));
    }

    #[test]
    fn future_versions_are_reported() {
        let mut meta = sample_meta();
        meta.format_version = 99;
        let bytes = encode_metadata(&meta);
        assert_eq!(
            decode_metadata(&bytes),
            Err(MetadataError::UnsupportedVersion(99))
        );
    }

    #[test]
    fn inconsistent_metadata_is_corrupt() {
        let mut m = sample_meta();
        m.operators[0].files[1].subtask = 0;
        assert!(matches!(
            decode_metadata(&encode_metadata(&m)),
            Err(MetadataError::Corrupt(r)) if r.contains("twice")
        ));
        let mut m = sample_meta();
        m.operators[0].files[1].subtask = 2;
        assert!(matches!(
            decode_metadata(&encode_metadata(&m)),
            Err(MetadataError::Corrupt(r)) if r.contains("parallelism")
        ));
        let mut m = sample_meta();
        m.operators[0].files[0].file = "../../etc/passwd".into();
        assert!(matches!(
            decode_metadata(&encode_metadata(&m)),
            Err(MetadataError::Corrupt(r)) if r.contains("not allowed")
        ));
    }
}
