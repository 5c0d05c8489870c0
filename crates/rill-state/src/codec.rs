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
}
