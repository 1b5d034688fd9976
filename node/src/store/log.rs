//! The record log: the bytes of every record the store holds, appended to one file beside
//! sled's, while sled keeps a small pointer per record (see [`super::Store`]).
//!
//! Why not in sled: sled 0.34 copies a leaf on every insert and splits it by bytes, so with
//! record bytes (hundreds of bytes each) in the leaves, one record insert copied and split kilobytes,
//! and sled kept about 3.3 bytes on disk per record byte. Here a record costs one append, and
//! sled's leaves hold 13-byte pointers.
//!
//! A frame is `len (u32 LE) ‖ record id (32 bytes) ‖ payload`, the payload `len` bytes long.
//! A pointer names a frame's offset and length; a read checks that the frame there still names
//! the record, so a frame erased under a reader is noticed, never returned as someone else's
//! bytes.
//!
//! Compression (store format 5): when LZ4 saves at least a tenth of a record, the payload is
//! `size (u32 LE) ‖ LZ4 block` and `len`'s top bit is set; otherwise it is the record's bytes.
//! Records are mostly text (titles, descriptions, keywords in several languages), which LZ4
//! packs to about 0.7 of its size at a few microseconds a record. Frames of older formats are
//! never compressed and read as they are.
//!
//! Durability: the store syncs the log before it flushes sled (so everything acknowledged is
//! on disk in both) and records in sled how far the log was synced. Appends are not synced one
//! by one: a sync per gossip batch cost a 10-node benchmark 5 ms at p50. A process crash loses
//! nothing the operating system was given; only a power failure can leave sled pointing past
//! what reached the log, and only past the synced length, which is what the store checks at
//! open (see `Store::forget_lost_records`).
//!
//! Erasure: a superseded or withdrawn record's frame is punched out of the file (the file
//! system frees whole blocks and zeroes the rest), or overwritten with zeros where punching is
//! not supported. Its bytes are gone from the disk either way, not only unreferenced.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A pointer's length: tag, offset (u64 LE), frame length (u32 LE).
pub(super) const POINTER_LEN: usize = 13;
/// First byte of every pointer. Record bytes (a postcard envelope) are never 13 bytes long, so
/// a value is a pointer exactly when it has this length; the tag guards against surprises.
const POINTER_TAG: u8 = 0xFE;
/// Frame header: length and record id.
const HEADER: usize = 4 + 32;
/// The bit of a frame's length that marks a compressed payload.
const COMPRESSED: u32 = 1 << 31;
/// A record is stored compressed only when that takes at most this share of its bytes (in
/// tenths), so reads of incompressible records cost no decompression.
const COMPRESSED_TENTHS_MAX: usize = 9;

/// The payload of a record's frame, and whether it is compressed.
fn payload(bytes: &[u8]) -> (std::borrow::Cow<'_, [u8]>, bool) {
    let packed = lz4_flex::compress(bytes);
    if 4 + packed.len() <= bytes.len() * COMPRESSED_TENTHS_MAX / 10 {
        let mut out = Vec::with_capacity(4 + packed.len());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&packed);
        (std::borrow::Cow::Owned(out), true)
    } else {
        (std::borrow::Cow::Borrowed(bytes), false)
    }
}

/// A record's bytes from a compressed payload; an error if the payload is damaged.
fn unpack(payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let damaged = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a compressed record in the log is damaged: {why}"),
        )
    };
    let (size, packed) = payload
        .split_first_chunk::<4>()
        .ok_or_else(|| damaged("no size"))?;
    let size = u32::from_le_bytes(*size) as usize;
    // LZ4 expands at most 255-fold: a larger size is damage, not a reason to allocate it.
    if size > packed.len().saturating_mul(255) {
        return Err(damaged("its size is more than LZ4 can expand to"));
    }
    let bytes = lz4_flex::decompress(packed, size).map_err(|e| damaged(&e.to_string()))?;
    if bytes.len() != size {
        return Err(damaged("its size does not match"));
    }
    Ok(bytes)
}

/// Where a frame lies in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pointer {
    offset: u64,
    frame_len: u32,
}

impl Pointer {
    /// Where the frame ends.
    pub(super) fn end(self) -> u64 {
        self.offset + u64::from(self.frame_len)
    }

    pub(super) fn encode(self) -> [u8; POINTER_LEN] {
        let mut out = [0u8; POINTER_LEN];
        out[0] = POINTER_TAG;
        out[1..9].copy_from_slice(&self.offset.to_le_bytes());
        out[9..].copy_from_slice(&self.frame_len.to_le_bytes());
        out
    }

    /// The pointer in a stored value, or `None` if the value is not one (a record stored in
    /// sled itself by a store of format 1).
    pub(super) fn decode(value: &[u8]) -> Option<Pointer> {
        if value.len() != POINTER_LEN || value[0] != POINTER_TAG {
            return None;
        }
        let offset = u64::from_le_bytes(value[1..9].try_into().ok()?);
        let frame_len = u32::from_le_bytes(value[9..].try_into().ok()?);
        Some(Pointer { offset, frame_len })
    }
}

/// What a read found at a pointer.
pub(super) enum Read {
    Bytes(Vec<u8>),
    /// The frame there does not name the record (erased, or the pointer is stale).
    Gone,
}

pub(super) struct RecordLog {
    file: File,
    /// Where the next frame goes. Appends are serialised by the store's apply lock; readers
    /// only follow pointers to frames already written.
    end: AtomicU64,
}

impl RecordLog {
    /// Opens (creating if needed) the log at `path`. Whatever lies past the last frame a
    /// pointer names (a write set a crash cut short) is left in place and never read.
    pub(super) fn open(path: &Path) -> std::io::Result<RecordLog> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if !existed {
            // The file's name must survive a crash as well as its contents.
            if let Some(parent) = path.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        let end = file.metadata()?.len();
        Ok(RecordLog {
            file,
            end: AtomicU64::new(end),
        })
    }

    /// Appends one frame per record and returns each record's pointer in order. Not yet
    /// durable: see [`RecordLog::sync`]. The caller holds the store's apply lock.
    pub(super) fn append<'a>(
        &self,
        records: impl Iterator<Item = (&'a [u8; 32], &'a [u8])>,
    ) -> std::io::Result<Vec<Pointer>> {
        let start = self.end.load(Ordering::Acquire);
        let mut buf = Vec::new();
        let mut pointers = Vec::new();
        for (id, bytes) in records {
            let (payload, compressed) = payload(bytes);
            let too_large =
                || std::io::Error::new(std::io::ErrorKind::InvalidInput, "record too large");
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|n| n & COMPRESSED == 0)
                .ok_or_else(too_large)?;
            let frame_len = u32::try_from(HEADER + payload.len()).map_err(|_| too_large())?;
            pointers.push(Pointer {
                offset: start + buf.len() as u64,
                frame_len,
            });
            let flag = if compressed { COMPRESSED } else { 0 };
            buf.extend_from_slice(&(len | flag).to_le_bytes());
            buf.extend_from_slice(id);
            buf.extend_from_slice(&payload);
        }
        if buf.is_empty() {
            return Ok(pointers);
        }
        self.file.write_all_at(&buf, start)?;
        self.end.store(start + buf.len() as u64, Ordering::Release);
        Ok(pointers)
    }

    /// The bytes of record `id` at `pointer`.
    pub(super) fn read(&self, pointer: Pointer, id: &[u8; 32]) -> std::io::Result<Read> {
        let len = pointer.frame_len as usize;
        if len < HEADER || pointer.offset + len as u64 > self.end.load(Ordering::Acquire) {
            return Ok(Read::Gone);
        }
        let mut frame = vec![0u8; len];
        self.file.read_exact_at(&mut frame, pointer.offset)?;
        let named = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        if (named & !COMPRESSED) as usize != len - HEADER || frame[4..HEADER] != id[..] {
            return Ok(Read::Gone);
        }
        if named & COMPRESSED != 0 {
            return unpack(&frame[HEADER..]).map(Read::Bytes);
        }
        frame.drain(..HEADER);
        Ok(Read::Bytes(frame))
    }

    /// Erases a frame's bytes from the disk.
    pub(super) fn erase(&self, pointer: Pointer) -> std::io::Result<()> {
        let (offset, len) = (pointer.offset, u64::from(pointer.frame_len));
        if offset + len > self.end.load(Ordering::Acquire) {
            return Ok(());
        }
        use rustix::fs::{FallocateFlags, fallocate};
        let punched = fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        );
        if punched.is_err() {
            self.file.write_all_at(&vec![0u8; len as usize], offset)?;
        }
        Ok(())
    }

    /// Makes every append and erasure so far durable; returns the length that is now synced.
    pub(super) fn sync(&self) -> std::io::Result<u64> {
        let end = self.end.load(Ordering::Acquire);
        self.file.sync_data()?;
        Ok(end)
    }

    /// The log's length: where the next frame goes.
    pub(super) fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Bytes the log occupies on disk (erased blocks excluded).
    pub(super) fn allocated_bytes(&self) -> u64 {
        self.file.metadata().map_or(0, |m| m.blocks() * 512)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A new log in a fresh directory: the directory, the log's path and the log.
    fn fresh_log(
        name: &str,
    ) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf, RecordLog)> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("records.log");
        let log = RecordLog::open(&path)?;
        Ok((dir, path, log))
    }

    #[test]
    fn frames_read_back_and_erased_frames_are_gone() -> std::io::Result<()> {
        let (dir, path, log) = fresh_log("kim-log-test")?;
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let big = noise(10_000);
        let pointers = log.append([(&a, &big[..]), (&b, &b"small"[..])].into_iter())?;
        assert!(matches!(log.read(pointers[0], &a)?, Read::Bytes(v) if v == big));
        assert!(matches!(log.read(pointers[1], &b)?, Read::Bytes(v) if v == b"small"));
        // A pointer followed for the wrong id finds nothing.
        assert!(matches!(log.read(pointers[1], &a)?, Read::Gone));
        // Pointers survive encoding; other values are not pointers.
        assert_eq!(Pointer::decode(&pointers[1].encode()), Some(pointers[1]));
        assert_eq!(Pointer::decode(b"not a pointer"), None);

        log.erase(pointers[0])?;
        assert!(matches!(log.read(pointers[0], &a)?, Read::Gone));
        assert!(matches!(log.read(pointers[1], &b)?, Read::Bytes(v) if v == b"small"));
        let on_disk = std::fs::read(&path)?;
        assert!(
            !on_disk.windows(64).any(|w| w == &big[..64]),
            "erased bytes are still in the file"
        );
        // Reopened, the log appends after what it holds.
        drop(log);
        let log = RecordLog::open(&path)?;
        let again = log.append([(&a, &b"again"[..])].into_iter())?;
        assert!(again[0].offset > pointers[1].offset);
        assert!(matches!(log.read(again[0], &a)?, Read::Bytes(v) if v == b"again"));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Bytes LZ4 cannot shrink, so the log stores them as they are and a test can look for
    /// them in the file (the store's erasure tests use them too).
    pub(in crate::store) fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1D ^ n as u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn text_is_stored_compressed_and_reads_back_exactly() -> std::io::Result<()> {
        let (dir, _, log) = fresh_log("kim-log-lz4")?;
        let text = "Wireless sensor platform for dairy quality monitoring; Funksensorplattform \
                    zur Qualitätsüberwachung in Molkereien. "
            .repeat(20)
            .into_bytes();
        let random = noise(2_000);
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let pointers =
            log.append([(&a, &text[..]), (&b, &random[..]), (&c, &b"tiny"[..])].into_iter())?;
        assert!(
            (pointers[0].frame_len as usize) < HEADER + text.len() / 2,
            "text takes {} bytes in the log for {}",
            pointers[0].frame_len,
            text.len()
        );
        assert_eq!(pointers[1].frame_len as usize, HEADER + random.len());
        assert_eq!(pointers[2].frame_len as usize, HEADER + 4);
        for (pointer, id, bytes) in [
            (pointers[0], &a, &text[..]),
            (pointers[1], &b, &random[..]),
            (pointers[2], &c, &b"tiny"[..]),
        ] {
            assert!(matches!(log.read(pointer, id)?, Read::Bytes(v) if v == bytes));
        }
        // A damaged compressed payload is an error, never other bytes.
        let at = pointers[0].offset + HEADER as u64;
        log.file.write_all_at(&[0xFF; 4], at)?;
        let damaged = log.read(pointers[0], &a);
        assert!(
            matches!(&damaged, Err(e) if e.kind() == std::io::ErrorKind::InvalidData),
            "damaged payload read as {:?}",
            damaged.map(|r| matches!(r, Read::Gone))
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
