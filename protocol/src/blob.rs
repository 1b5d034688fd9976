//! Content-addressed attachments, verified while they stream.
//!
//! An attachment is named by the BLAKE3 hash of its bytes (`Attachment::blake3`). It travels in
//! pieces of [`BLOB_PIECE_BYTES`] (1 MiB). Because a piece is a power-of-two number of BLAKE3
//! chunks, each piece is a whole subtree of the file's BLAKE3 tree, so the receiver can check
//! every piece on arrival instead of only the whole file at the end:
//! - A file of one piece is checked directly: `blake3(piece) == root`.
//! - A larger file comes with a **manifest**: the chaining value of every piece. The receiver
//!   merges them along BLAKE3's tree (the left subtree always holds the largest power of two
//!   of pieces below the total) and accepts the manifest only if the merge gives the root; from
//!   then on each piece must have exactly its chaining value.
//!
//! A peer sending garbage is therefore caught at its first bad piece, and a transfer can stop
//! and resume at any piece boundary with what it has kept already proven.

use blake3::hazmat::{
    ChainingValue, HasherExt as _, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::bytes::Hash32;

/// Bytes of one piece (a power of two multiple of BLAKE3's 1 KiB chunk).
pub const BLOB_PIECE_BYTES: usize = 1 << 20;
const _: () = assert!(BLOB_PIECE_BYTES.is_power_of_two() && BLOB_PIECE_BYTES >= blake3::CHUNK_LEN);

/// Why a manifest or a piece is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("the manifest lists {found} pieces; a file of {size} bytes has {expected}")]
    ManifestLength {
        found: usize,
        expected: u64,
        size: u64,
    },
    #[error("the manifest does not hash to the attachment's BLAKE3 root")]
    ManifestMismatch,
    #[error("piece {index} does not exist in a file of {pieces} pieces")]
    NoSuchPiece { index: u64, pieces: u64 },
    #[error("piece {index} is {found} bytes; it must be {expected}")]
    PieceLength {
        index: u64,
        found: usize,
        expected: usize,
    },
    #[error("piece {index} does not match the attachment's hash (corrupt or forged data)")]
    PieceMismatch { index: u64 },
}

impl BlobError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            BlobError::ManifestLength { .. } => "blob.manifest_length",
            BlobError::ManifestMismatch => "blob.manifest_mismatch",
            BlobError::NoSuchPiece { .. } => "blob.no_such_piece",
            BlobError::PieceLength { .. } => "blob.piece_length",
            BlobError::PieceMismatch { .. } => "blob.piece_mismatch",
        }
    }
}

/// Pieces of a file of `size` bytes (an empty file is one empty piece).
pub fn piece_count(size: u64) -> u64 {
    size.div_ceil(BLOB_PIECE_BYTES as u64).max(1)
}

/// Length of piece `index` of a file of `size` bytes.
pub fn piece_len(size: u64, index: u64) -> Option<usize> {
    let pieces = piece_count(size);
    if index >= pieces {
        return None;
    }
    let start = index * BLOB_PIECE_BYTES as u64;
    Some((size - start.min(size)).min(BLOB_PIECE_BYTES as u64) as usize)
}

/// The chaining value of piece `index` (for files of more than one piece).
pub fn piece_cv(index: u64, piece: &[u8]) -> Hash32 {
    if piece.is_empty() {
        // Never a valid subtree; callers only ask for non-empty pieces of multi-piece files.
        return Hash32([0; 32]);
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(index * BLOB_PIECE_BYTES as u64);
    hasher.update(piece);
    Hash32(hasher.finalize_non_root())
}

/// Merges the chaining values of `count` whole pieces into their subtree's value.
fn merge(cvs: &[ChainingValue], root: bool) -> Result<ChainingValue, ()> {
    match cvs.len() {
        0 => Err(()),
        1 if !root => Ok(cvs[0]),
        1 => Err(()),
        n => {
            // The largest power of two strictly below n.
            let left = (n / 2 + n % 2).next_power_of_two().min(n - 1);
            let left = if left.is_power_of_two() && left < n {
                left
            } else {
                1
            };
            let l = merge(&cvs[..left], false)?;
            let r = merge(&cvs[left..], false)?;
            Ok(if root {
                *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
            } else {
                merge_subtrees_non_root(&l, &r, Mode::Hash)
            })
        }
    }
}

/// Checks a manifest (one chaining value per piece) against the root hash and size. A file of
/// one piece has an empty manifest.
pub fn verify_manifest(root: &Hash32, size: u64, manifest: &[Hash32]) -> Result<(), BlobError> {
    let pieces = piece_count(size);
    let expected = if pieces == 1 { 0 } else { pieces };
    if manifest.len() as u64 != expected {
        return Err(BlobError::ManifestLength {
            found: manifest.len(),
            expected,
            size,
        });
    }
    if pieces == 1 {
        return Ok(());
    }
    let cvs: Vec<ChainingValue> = manifest.iter().map(|h| h.0).collect();
    match merge(&cvs, true) {
        Ok(hash) if hash == root.0 => Ok(()),
        _ => Err(BlobError::ManifestMismatch),
    }
}

/// Checks piece `index` of a file of `size` bytes against the root and a verified manifest.
pub fn verify_piece(
    root: &Hash32,
    size: u64,
    manifest: &[Hash32],
    index: u64,
    piece: &[u8],
) -> Result<(), BlobError> {
    let pieces = piece_count(size);
    let expected = piece_len(size, index).ok_or(BlobError::NoSuchPiece { index, pieces })?;
    if piece.len() != expected {
        return Err(BlobError::PieceLength {
            index,
            found: piece.len(),
            expected,
        });
    }
    let ok = if pieces == 1 {
        blake3::hash(piece).as_bytes() == &root.0
    } else {
        manifest
            .get(index as usize)
            .is_some_and(|cv| piece_cv(index, piece) == *cv)
    };
    if ok {
        Ok(())
    } else {
        Err(BlobError::PieceMismatch { index })
    }
}

/// The manifest of a whole file held in memory (tests and small files; the node builds it
/// piece by piece from disk with [`piece_cv`]).
pub fn manifest_of(data: &[u8]) -> Vec<Hash32> {
    if data.len() <= BLOB_PIECE_BYTES {
        return Vec::new();
    }
    data.chunks(BLOB_PIECE_BYTES)
        .enumerate()
        .map(|(i, piece)| piece_cv(i as u64, piece))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn manifests_hash_to_the_root_for_every_shape_of_tree() {
        for len in [
            0,
            1,
            BLOB_PIECE_BYTES - 1,
            BLOB_PIECE_BYTES,
            BLOB_PIECE_BYTES + 1,
            2 * BLOB_PIECE_BYTES,
            3 * BLOB_PIECE_BYTES - 7,
            4 * BLOB_PIECE_BYTES,
            5 * BLOB_PIECE_BYTES + 123,
            7 * BLOB_PIECE_BYTES,
        ] {
            let bytes = data(len);
            let root = Hash32(*blake3::hash(&bytes).as_bytes());
            let manifest = manifest_of(&bytes);
            verify_manifest(&root, len as u64, &manifest).unwrap();
            for (i, piece) in bytes.chunks(BLOB_PIECE_BYTES).enumerate() {
                verify_piece(&root, len as u64, &manifest, i as u64, piece).unwrap();
            }
            if len == 0 {
                verify_piece(&root, 0, &manifest, 0, &[]).unwrap();
            }
        }
    }

    #[test]
    fn forged_manifests_and_pieces_are_caught() {
        let bytes = data(3 * BLOB_PIECE_BYTES + 5);
        let size = bytes.len() as u64;
        let root = Hash32(*blake3::hash(&bytes).as_bytes());
        let mut manifest = manifest_of(&bytes);
        // A piece altered by one bit.
        let mut piece = bytes[BLOB_PIECE_BYTES..2 * BLOB_PIECE_BYTES].to_vec();
        piece[77] ^= 1;
        assert_eq!(
            verify_piece(&root, size, &manifest, 1, &piece),
            Err(BlobError::PieceMismatch { index: 1 })
        );
        // A right piece sent as another index.
        let first = &bytes[..BLOB_PIECE_BYTES];
        assert!(verify_piece(&root, size, &manifest, 2, first).is_err());
        // Truncated pieces, pieces past the end.
        assert_eq!(
            verify_piece(
                &root,
                size,
                &manifest,
                3,
                &bytes[3 * BLOB_PIECE_BYTES..][..4]
            )
            .unwrap_err()
            .code(),
            "blob.piece_length"
        );
        assert_eq!(
            verify_piece(&root, size, &manifest, 4, &[1])
                .unwrap_err()
                .code(),
            "blob.no_such_piece"
        );
        // A manifest with one value changed, or too short, or for another file.
        manifest[2].0[0] ^= 1;
        assert_eq!(
            verify_manifest(&root, size, &manifest),
            Err(BlobError::ManifestMismatch)
        );
        manifest.pop();
        assert_eq!(
            verify_manifest(&root, size, &manifest).unwrap_err().code(),
            "blob.manifest_length"
        );
        let other = manifest_of(&data(4 * BLOB_PIECE_BYTES));
        assert!(verify_manifest(&root, size, &other).is_err());
        // A one-piece file: the piece is the file.
        let small = data(1000);
        let small_root = Hash32(*blake3::hash(&small).as_bytes());
        let mut bad = small.clone();
        bad[0] ^= 1;
        assert!(verify_piece(&small_root, 1000, &[], 0, &bad).is_err());
        verify_piece(&small_root, 1000, &[], 0, &small).unwrap();
    }
}
