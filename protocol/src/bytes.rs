//! Fixed-size byte strings that cross boundaries: record ids, keys, hashes, signatures.
//!
//! In the binary encoding they are written as exactly N raw bytes (no length prefix), because
//! their size is part of the type. In human-readable encodings (the node's JSON API) they are
//! lowercase hex, because that is what people paste into a terminal.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Writes `bytes` as lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Reads hex (either case) into a vector; `None` when the text is not hex of even length.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let raw = text.as_bytes();
    if !raw.len().is_multiple_of(2) {
        return None;
    }
    raw.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Serde helper for variable-length bytes: a byte string in binary encodings (varint length
/// then the bytes, the same layout as a `Vec<u8>` sequence in postcard), hex in JSON.
pub mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&super::to_hex(bytes))
        } else {
            serializer.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            super::from_hex(&text).ok_or_else(|| serde::de::Error::custom("not hex"))
        } else {
            serde_bytes_vec(deserializer)
        }
    }

    fn serde_bytes_vec<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct BytesVisitor;
        impl<'de> serde::de::Visitor<'de> for BytesVisitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

/// Serialises N bytes as a fixed tuple (binary) or hex (human-readable).
fn serialize_fixed<S: Serializer, const N: usize>(
    bytes: &[u8; N],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.serialize_str(&to_hex(bytes))
    } else {
        let mut tuple = serializer.serialize_tuple(N)?;
        for b in bytes {
            tuple.serialize_element(b)?;
        }
        tuple.end()
    }
}

struct FixedVisitor<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for FixedVisitor<N> {
    type Value = [u8; N];

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{N} bytes or {} hex digits", N * 2)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        let bytes = from_hex(text).ok_or_else(|| E::custom("not hex"))?;
        bytes
            .try_into()
            .map_err(|_| E::custom(format_args!("expected {} hex digits", N * 2)))
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
        bytes
            .try_into()
            .map_err(|_| E::custom(format_args!("expected {N} bytes")))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = [0u8; N];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        Ok(out)
    }
}

fn deserialize_fixed<'de, D: Deserializer<'de>, const N: usize>(
    deserializer: D,
) -> Result<[u8; N], D::Error> {
    if deserializer.is_human_readable() {
        deserializer.deserialize_str(FixedVisitor::<N>)
    } else {
        deserializer.deserialize_tuple(N, FixedVisitor::<N>)
    }
}

/// OpenAPI schema of an N-byte value written as hex.
#[cfg(feature = "openapi")]
fn hex_schema(len: usize) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!("^[0-9a-f]{{{}}}$", len * 2)))
        .description(Some(format!("{len} bytes as lowercase hex")))
        .into()
}

macro_rules! fixed_bytes {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex, as shown to people and in JSON.
            pub fn to_hex(&self) -> String {
                to_hex(&self.0)
            }

            /// Parses hex of exactly the right length.
            pub fn from_hex(text: &str) -> Option<Self> {
                from_hex(text)?.try_into().ok().map(Self)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), to_hex(&self.0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&to_hex(&self.0))
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::from_hex(text).ok_or_else(|| {
                    format!("expected {} hex digits for {}", $len * 2, stringify!($name))
                })
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                hex_schema($len)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serialize_fixed(&self.0, serializer)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserialize_fixed(deserializer).map(Self)
            }
        }
    };
}

fixed_bytes!(
    /// A record's id: BLAKE3 of its complete envelope bytes.
    RecordId,
    32
);
fixed_bytes!(
    /// An ed25519 public key as 32 bytes (not yet checked to be a valid point).
    PublicKey,
    32
);
fixed_bytes!(
    /// A federation's id: BLAKE3 of its charter bytes (domain-separated).
    FederationId,
    32
);
fixed_bytes!(
    /// A 32-byte BLAKE3 hash: file contents, membership state digests, state digests.
    Hash32,
    32
);
fixed_bytes!(
    /// An ed25519 signature (R ‖ S).
    SignatureBytes,
    64
);

/// A region is named by the first key it ever signed with: the founder key in the charter or the
/// key of its join request. Keys rotate; the region id does not.
pub type RegionId = PublicKey;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let id = RecordId([0xab; 32]);
        assert_eq!(RecordId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(RecordId::from_hex("abc"), None);
        assert_eq!(RecordId::from_hex(&"zz".repeat(32)), None);
        assert_eq!(RecordId::from_hex(&"00".repeat(31)), None);
    }

    #[test]
    fn binary_form_is_raw_bytes_and_json_is_hex() -> Result<(), Box<dyn std::error::Error>> {
        let sig = SignatureBytes([7; 64]);
        let bin = postcard::to_stdvec(&sig)?;
        assert_eq!(bin, vec![7u8; 64]);
        let back: SignatureBytes = postcard::from_bytes(&bin)?;
        assert_eq!(back, sig);
        let json = serde_json::to_string(&sig)?;
        assert_eq!(json, format!("\"{}\"", "07".repeat(64)));
        let back: SignatureBytes = serde_json::from_str(&json)?;
        assert_eq!(back, sig);
        Ok(())
    }
}
