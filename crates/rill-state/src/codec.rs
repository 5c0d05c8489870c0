//! The binary encoding of snapshots: compact, fast, and explicit about
//! corruption (a snapshot that does not decode is an error, never a panic).

use serde::{de::DeserializeOwned, Serialize};

use crate::StateError;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StateError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| StateError::Encode(e.to_string()))
}

/// Appends the encoding of `value` to `out` (the same bytes [`encode`] makes).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), StateError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| StateError::Encode(e.to_string()))
}

/// Decodes a value from the front of `bytes`; returns it and how many bytes
/// it took, so that several encodings can follow one another.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), StateError> {
    bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| StateError::Corrupt(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| StateError::Corrupt(e.to_string()))?;
    if read != bytes.len() {
        return Err(StateError::Corrupt(format!(
            "{} trailing bytes after the value",
            bytes.len() - read
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let v = vec![("a".to_string(), 1u64), ("b".to_string(), 2)];
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<Vec<(String, u64)>>(&bytes).unwrap(), v);
        assert!(decode::<Vec<(String, u64)>>(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<Vec<(String, u64)>>(&longer).is_err());
    }

    #[test]
    fn concatenated_encodings_equal_the_encoded_sequence() {
        // The RocksDB backend assembles snapshot tables from stored bytes:
        // a length followed by the entries must be the encoded vector.
        let v: Vec<(String, u64, i64)> = (0..300)
            .map(|i| (format!("k{i}"), i * 1000, -(i as i64) * 70_000))
            .collect();
        let mut assembled = encode(&(v.len() as u64)).unwrap();
        for (k, s, t) in &v {
            encode_into(k, &mut assembled).unwrap();
            encode_into(s, &mut assembled).unwrap();
            encode_into(t, &mut assembled).unwrap();
        }
        assert_eq!(assembled, encode(&v).unwrap());
        let (first, used) = decode_prefix::<String>(&assembled[3..]).unwrap();
        assert_eq!((first.as_str(), used), ("k0", 3));
        assert!(decode_prefix::<String>(&[200]).is_err());
    }
}
