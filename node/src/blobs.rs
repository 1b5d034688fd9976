//! Knowledge attachments: a content-addressed file store, the blobs protocol
//! (`/kim/<federation>/blobs/1`) and fetching on demand, verified piece by piece.
//!
//! # On disk (`DATA_DIR/blobs/`)
//! - `<hex>` — a complete file, named by its BLAKE3 hash; only ever created by renaming a file
//!   whose every byte was checked against that hash.
//! - `manifests/<hex>` — the piece chaining values of a complete file (32 bytes each), a cache
//!   so serving a manifest does not rehash the file; checked against the root when read.
//! - `partial/<hex>.part` — a transfer under way, at full length, with the pieces received so
//!   far at their offsets; `partial/<hex>.state` — JSON sidecar: size, the verified manifest and
//!   which pieces are present. A piece is marked present only after it verified and its bytes
//!   were synced, and the sidecar is replaced atomically, so a transfer resumes across restarts
//!   with exactly the pieces that were proven. Opening a partial checks the manifest and every
//!   present piece again; a partial that fails is deleted.
//! - `unclaimed/<hex>` — an upload no live knowledge item references yet; kept for
//!   [`UNCLAIMED_GRACE`] so staff can publish the item that lists it.
//!
//! Every file is written to a temporary name, synced and renamed (and the directory synced).
//!
//! # The protocol (one request, one response, framed like sync: LEB128 length ‖ payload)
//! | tag | request | body |
//! | --- | --- | --- |
//! | 0 | `Manifest` | 32-byte hash |
//! | 1 | `Piece` | 32-byte hash ‖ varint piece index |
//!
//! | tag | response | body |
//! | --- | --- | --- |
//! | 0 | `Manifest` | varint size ‖ varint count ‖ count × 32-byte chaining values |
//! | 1 | `Piece` | the piece's bytes (the rest of the payload, at most 1 MiB) |
//! | 2 | `NotFound` | empty |
//! | 3 | `Refused` | varint length ≤ 64 ‖ an error code in ASCII |
//!
//! Only members' nodes are served (guests are refused); requests are rate limited per peer.
//! The receiver checks the manifest against the attachment's hash and size before it asks for
//! any piece, and every piece against the manifest on arrival (`kim_protocol::blob`); a peer
//! sending a bad manifest or piece gets [`POINTS_BAD_BLOB`] misbehaviour points and is asked
//! no more.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use kim_protocol::blob::{
    BLOB_PIECE_BYTES, BlobError, piece_count, piece_cv, piece_len, verify_manifest, verify_piece,
};
use kim_protocol::limits::ATTACHMENT_BYTES_MAX;
use kim_protocol::types::Attachment;
use kim_protocol::{Body, FederationId, Hash32, Kind, Record};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::config::write_atomic;
use crate::ingest::Ingest;
use crate::net::{
    DecodeError, Framed, FramedCodec, NetClient, NetError, Reader, put_refusal, put_varint,
};

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Default largest attachment a node stores, fetches or serves (`blob_bytes_max`).
pub const BLOB_BYTES_MAX_DEFAULT: u64 = 50 * 1024 * 1024;
/// Largest blobs frame in either direction: one piece and its tag.
pub const BLOB_FRAME_BYTES_MAX: usize = BLOB_PIECE_BYTES + 64;
/// Most chaining values in a manifest (the protocol's largest attachment).
pub const MANIFEST_PIECES_MAX: usize = (ATTACHMENT_BYTES_MAX / BLOB_PIECE_BYTES as u64) as usize;
/// Blob requests one peer may make per [`BLOB_RATE_WINDOW`] (3,000 MiB of pieces).
pub const BLOB_ASKS_PER_WINDOW: u32 = 3000;
pub const BLOB_RATE_WINDOW: Duration = Duration::from_secs(10);
/// Inbound blob requests read from disk at once.
pub const BLOB_SERVE_TASKS_MAX: usize = 8;
/// Misbehaviour points for a manifest or piece that fails verification.
pub const POINTS_BAD_BLOB: u32 = 25;
/// Piece requests in flight to one peer during a fetch.
const PIECES_IN_FLIGHT_PER_PEER: usize = 4;
/// Peers asked for a manifest at once.
const MANIFEST_ASKS_MAX: usize = 8;
/// How long an upload stays without a live knowledge item listing it.
pub const UNCLAIMED_GRACE: Duration = Duration::from_secs(24 * 3600);
/// How long a peer that sent bad blob data is not asked again.
const DISTRUST: Duration = Duration::from_secs(600);

const _: () = assert!(MANIFEST_PIECES_MAX * 32 + 32 < BLOB_FRAME_BYTES_MAX);
const _: () = assert!(BLOB_FRAME_BYTES_MAX <= crate::net::SYNC_FRAME_BYTES_MAX);

// ---------------------------------------------------------------------------------------------
// Messages and codec
// ---------------------------------------------------------------------------------------------

/// A blobs-protocol request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobAsk {
    Manifest { hash: Hash32 },
    Piece { hash: Hash32, index: u64 },
}

/// A blobs-protocol response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobAnswer {
    Manifest { size: u64, manifest: Vec<Hash32> },
    Piece(Vec<u8>),
    NotFound,
    Refused(String),
}

impl BlobAsk {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        match self {
            BlobAsk::Manifest { hash } => {
                out.push(0);
                out.extend_from_slice(&hash.0);
            }
            BlobAsk::Piece { hash, index } => {
                out.push(1);
                out.extend_from_slice(&hash.0);
                put_varint(&mut out, *index);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<BlobAsk, DecodeError> {
        let mut r = Reader(bytes);
        let tag = r.take(1)?[0];
        let hash = |r: &mut Reader| -> Result<Hash32, DecodeError> {
            let mut h = [0u8; 32];
            h.copy_from_slice(r.take(32)?);
            Ok(Hash32(h))
        };
        let ask = match tag {
            0 => BlobAsk::Manifest {
                hash: hash(&mut r)?,
            },
            1 => {
                let h = hash(&mut r)?;
                BlobAsk::Piece {
                    hash: h,
                    index: r.varint()?,
                }
            }
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(ask)
    }
}

impl BlobAnswer {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            BlobAnswer::Manifest { size, manifest } => {
                let mut out = Vec::with_capacity(12 + manifest.len() * 32);
                out.push(0);
                put_varint(&mut out, *size);
                put_varint(&mut out, manifest.len() as u64);
                for cv in manifest {
                    out.extend_from_slice(&cv.0);
                }
                out
            }
            BlobAnswer::Piece(bytes) => {
                let mut out = Vec::with_capacity(1 + bytes.len());
                out.push(1);
                out.extend_from_slice(bytes);
                out
            }
            BlobAnswer::NotFound => vec![2],
            BlobAnswer::Refused(code) => {
                let mut out = vec![3];
                put_refusal(&mut out, code);
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<BlobAnswer, DecodeError> {
        let mut r = Reader(bytes);
        let tag = r.take(1)?[0];
        let answer = match tag {
            0 => {
                let size = r.varint()?;
                let count = r.count(MANIFEST_PIECES_MAX)?;
                let mut manifest = Vec::with_capacity(count);
                for _ in 0..count {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(r.take(32)?);
                    manifest.push(Hash32(h));
                }
                BlobAnswer::Manifest { size, manifest }
            }
            1 => {
                let rest = r.take(r.0.len())?;
                if rest.len() > BLOB_PIECE_BYTES {
                    return Err(DecodeError::TooLarge {
                        bytes: rest.len(),
                        max: BLOB_PIECE_BYTES,
                    });
                }
                BlobAnswer::Piece(rest.to_vec())
            }
            2 => BlobAnswer::NotFound,
            3 => BlobAnswer::Refused(r.refusal()?),
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(answer)
    }
}

/// Frames blobs messages like sync frames, with the blobs frame limit.
pub(crate) type BlobCodec = FramedCodec<BlobAsk, BlobAnswer>;

impl Framed for BlobAsk {
    const FRAME_BYTES_MAX: usize = BLOB_FRAME_BYTES_MAX;
    fn to_frame(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_frame(bytes: &[u8]) -> Result<Self, String> {
        BlobAsk::decode(bytes).map_err(|e| e.to_string())
    }
}

impl Framed for BlobAnswer {
    const FRAME_BYTES_MAX: usize = BLOB_FRAME_BYTES_MAX;
    fn to_frame(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_frame(bytes: &[u8]) -> Result<Self, String> {
        BlobAnswer::decode(bytes).map_err(|e| e.to_string())
    }
}

/// The blobs protocol's name for a federation.
pub fn protocol_name(federation: &FederationId) -> anyhow::Result<StreamProtocol> {
    StreamProtocol::try_from_owned(kim_protocol::names::blobs_protocol(federation))
        .map_err(|e| anyhow::anyhow!("blobs protocol name: {e}"))
}

// ---------------------------------------------------------------------------------------------
// What a node serves
// ---------------------------------------------------------------------------------------------

/// What the network serves to members' nodes. [`BlobStore`] implements it; tests implement it
/// to play a peer that lies. Called on blocking threads.
pub trait BlobSource: Send + Sync + 'static {
    /// Size and manifest of a complete file held here.
    fn manifest(&self, hash: &Hash32) -> anyhow::Result<Option<(u64, Vec<Hash32>)>>;
    /// Piece `index` of a complete file held here.
    fn piece(&self, hash: &Hash32, index: u64) -> anyhow::Result<Option<Vec<u8>>>;
}

/// Answers one request from a source (on a blocking thread).
pub fn answer(source: &dyn BlobSource, ask: &BlobAsk) -> BlobAnswer {
    let result = match ask {
        BlobAsk::Manifest { hash } => source.manifest(hash).map(|m| match m {
            Some((size, manifest)) => BlobAnswer::Manifest { size, manifest },
            None => BlobAnswer::NotFound,
        }),
        BlobAsk::Piece { hash, index } => source.piece(hash, *index).map(|p| match p {
            Some(bytes) => BlobAnswer::Piece(bytes),
            None => BlobAnswer::NotFound,
        }),
    };
    result.unwrap_or_else(|e| {
        tracing::warn!(cause = %e, "cannot read a blob to serve it");
        BlobAnswer::Refused("blobs.store_failure".into())
    })
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

/// What the store holds of one hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    Complete { size: u64 },
    Partial { size: u64, have: u64, pieces: u64 },
    Absent,
}

/// Counters since start.
#[derive(Debug, Default)]
pub struct BlobCounters {
    /// Verified pieces received from peers and kept.
    pub pieces_fetched: AtomicU64,
    /// Pieces (or manifests) from peers that failed verification and were discarded.
    pub pieces_rejected: AtomicU64,
    /// Pieces sent to peers.
    pub pieces_served: AtomicU64,
    /// Files deleted because no live knowledge item lists them any more.
    pub files_dropped: AtomicU64,
}

/// The sidecar of a partial file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartialState {
    size: u64,
    manifest: Vec<Hash32>,
    have: Vec<bool>,
}

/// The attachment store of a data directory.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    bytes_max: u64,
    /// One fetch per hash at a time; the sweep skips hashes being fetched.
    fetches: Mutex<HashMap<Hash32, Arc<tokio::sync::Mutex<()>>>>,
    /// Peers that sent bad blob data, until when they are not asked again.
    distrusted: Mutex<HashMap<PeerId, std::time::Instant>>,
    /// Held by a sweep while it decides and deletes, and by a publish from checking its
    /// attachments until it has stored the record: a sweep never deletes a file an item being
    /// published lists.
    pub sweep_lock: tokio::sync::Mutex<()>,
    /// The attachments live knowledge items list, for the record set with this digest,
    /// computed at this instant (expiry makes it stale after [`REFERENCED_TTL`]).
    referenced_cache: Mutex<Option<Referenced>>,
    pub counters: BlobCounters,
}

/// Why a piece was not kept.
#[derive(Debug, thiserror::Error)]
pub enum PieceError {
    #[error("{0}")]
    Invalid(#[from] BlobError),
    #[error("{0}")]
    Store(#[from] anyhow::Error),
}

/// A transfer under way: the `.part` file and its sidecar.
#[derive(Debug)]
pub struct Partial {
    hash: Hash32,
    state: PartialState,
    file: File,
    part: PathBuf,
    sidecar: PathBuf,
    /// Pieces verified and written but not yet synced and recorded in the sidecar.
    written: Vec<u64>,
}

/// Verified pieces written before they are synced and recorded in the sidecar together (one
/// fsync of the data and one sidecar replacement per batch instead of per piece).
pub const SIDECAR_EVERY_PIECES: usize = 8;

impl Partial {
    fn present(&self, index: u64) -> bool {
        self.state
            .have
            .get(index as usize)
            .copied()
            .unwrap_or(false)
            || self.written.contains(&index)
    }

    /// Pieces still missing, in order.
    pub fn missing(&self) -> Vec<u64> {
        (0..self.state.have.len() as u64)
            .filter(|i| !self.present(*i))
            .collect()
    }

    /// Pieces present (verified).
    pub fn have(&self) -> u64 {
        self.state.have.iter().filter(|h| **h).count() as u64 + self.written.len() as u64
    }

    /// Syncs the pieces written since the last call and records them in the sidecar, so a
    /// restart resumes with them. Only synced pieces are ever recorded.
    pub fn persist(&mut self) -> anyhow::Result<()> {
        if self.written.is_empty() {
            return Ok(());
        }
        self.file
            .sync_data()
            .with_context(|| format!("cannot sync {}", self.part.display()))?;
        for index in self.written.drain(..) {
            if let Some(slot) = self.state.have.get_mut(index as usize) {
                *slot = true;
            }
        }
        let json = serde_json::to_vec(&self.state).context("encoding a partial's sidecar")?;
        write_atomic(&self.sidecar, &json)
    }

    pub fn size(&self) -> u64 {
        self.state.size
    }

    pub fn manifest(&self) -> &[Hash32] {
        &self.state.manifest
    }

    /// Verifies piece `index` and writes it at its offset; every [`SIDECAR_EVERY_PIECES`]
    /// pieces are synced and recorded ([`Partial::persist`]). A piece that fails verification
    /// is not written.
    pub fn put_piece(&mut self, index: u64, bytes: &[u8]) -> Result<(), PieceError> {
        verify_piece(
            &self.hash,
            self.state.size,
            &self.state.manifest,
            index,
            bytes,
        )?;
        if self.present(index) {
            return Ok(());
        }
        self.file
            .write_all_at(bytes, index * BLOB_PIECE_BYTES as u64)
            .with_context(|| format!("cannot write {}", self.part.display()))?;
        self.written.push(index);
        if self.written.len() >= SIDECAR_EVERY_PIECES {
            self.persist()?;
        }
        Ok(())
    }

    pub fn is_complete(&self) -> bool {
        (0..self.state.have.len() as u64).all(|i| self.present(i))
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

fn remove_if_present(path: &Path) -> anyhow::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot delete {}", path.display())),
    }
}

/// Reads piece `index` of a file of `size` bytes.
fn read_piece_at(file: &File, size: u64, index: u64) -> io::Result<Option<Vec<u8>>> {
    let Some(len) = piece_len(size, index) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, index * BLOB_PIECE_BYTES as u64)?;
    Ok(Some(buf))
}

/// The manifest of a file on disk, read piece by piece.
fn manifest_of_file(file: &File, size: u64) -> io::Result<Vec<Hash32>> {
    let pieces = piece_count(size);
    if pieces == 1 {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(pieces as usize);
    for index in 0..pieces {
        let piece = read_piece_at(file, size, index)?.unwrap_or_default();
        out.push(piece_cv(index, &piece));
    }
    Ok(out)
}

/// BLAKE3 of a whole file, streamed.
fn hash_file(path: &Path) -> io::Result<Hash32> {
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Hash32(*hasher.finalize().as_bytes()))
}

impl BlobStore {
    /// Opens (creating) the store in `dir`, removing temporary files a crash left behind.
    pub fn open(dir: impl Into<PathBuf>, bytes_max: u64) -> anyhow::Result<BlobStore> {
        let dir = dir.into();
        for sub in ["", "partial", "manifests", "unclaimed"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
            for entry in fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "tmp") {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(BlobStore {
            dir,
            bytes_max,
            fetches: Mutex::default(),
            distrusted: Mutex::default(),
            sweep_lock: tokio::sync::Mutex::new(()),
            referenced_cache: Mutex::default(),
            counters: BlobCounters::default(),
        })
    }

    /// The largest file this node stores, fetches or serves.
    pub fn bytes_max(&self) -> u64 {
        self.bytes_max
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a complete file lives.
    pub fn path(&self, hash: &Hash32) -> PathBuf {
        self.dir.join(hash.to_hex())
    }

    fn manifest_path(&self, hash: &Hash32) -> PathBuf {
        self.dir.join("manifests").join(hash.to_hex())
    }

    fn part_path(&self, hash: &Hash32) -> PathBuf {
        self.dir
            .join("partial")
            .join(format!("{}.part", hash.to_hex()))
    }

    fn sidecar_path(&self, hash: &Hash32) -> PathBuf {
        self.dir
            .join("partial")
            .join(format!("{}.state", hash.to_hex()))
    }

    fn unclaimed_path(&self, hash: &Hash32) -> PathBuf {
        self.dir.join("unclaimed").join(hash.to_hex())
    }

    /// The size of a complete file, if held.
    pub fn held_size(&self, hash: &Hash32) -> Option<u64> {
        fs::metadata(self.path(hash))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// What is held of `hash`.
    pub fn held(&self, hash: &Hash32) -> Held {
        if let Some(size) = self.held_size(hash) {
            return Held::Complete { size };
        }
        let state = fs::read(self.sidecar_path(hash))
            .ok()
            .and_then(|b| serde_json::from_slice::<PartialState>(&b).ok());
        match state {
            Some(s) => Held::Partial {
                size: s.size,
                have: s.have.iter().filter(|h| **h).count() as u64,
                pieces: piece_count(s.size),
            },
            None => Held::Absent,
        }
    }

    /// Stores an uploaded file: its hash; refused above the size limit or when empty. The file
    /// is marked unclaimed until a live knowledge item lists it.
    pub fn put(&self, bytes: &[u8]) -> anyhow::Result<Hash32> {
        anyhow::ensure!(!bytes.is_empty(), "an attachment cannot be empty");
        anyhow::ensure!(
            bytes.len() as u64 <= self.bytes_max,
            "the file is {} bytes, more than the {} this node takes",
            bytes.len(),
            self.bytes_max
        );
        let hash = Hash32(*blake3::hash(bytes).as_bytes());
        write_atomic(&self.unclaimed_path(&hash), b"")?;
        if self.held_size(&hash) != Some(bytes.len() as u64) {
            write_atomic(&self.path(&hash), bytes)?;
        }
        let manifest = kim_protocol::blob::manifest_of(bytes);
        self.write_manifest(&hash, &manifest)?;
        Ok(hash)
    }

    fn write_manifest(&self, hash: &Hash32, manifest: &[Hash32]) -> anyhow::Result<()> {
        let bytes: Vec<u8> = manifest.iter().flat_map(|h| h.0).collect();
        write_atomic(&self.manifest_path(hash), &bytes)
    }

    /// A live knowledge item lists the file: it no longer needs the unclaimed grace.
    pub fn claim(&self, hash: &Hash32) -> anyhow::Result<()> {
        remove_if_present(&self.unclaimed_path(hash)).map(|_| ())
    }

    /// Opens a complete file for reading.
    pub fn open_file(&self, hash: &Hash32) -> io::Result<File> {
        File::open(self.path(hash))
    }

    /// Deletes everything held of `hash`: the file, its manifest, any partial and marker.
    pub fn remove(&self, hash: &Hash32) -> anyhow::Result<bool> {
        let mut any = false;
        for path in [
            self.path(hash),
            self.manifest_path(hash),
            self.part_path(hash),
            self.sidecar_path(hash),
            self.unclaimed_path(hash),
        ] {
            any |= remove_if_present(&path)?;
        }
        Ok(any)
    }

    /// Every hash held complete or partial.
    pub fn hashes(&self) -> anyhow::Result<HashSet<Hash32>> {
        let mut out = HashSet::new();
        for (dir, suffix) in [(self.dir.clone(), ""), (self.dir.join("partial"), ".state")] {
            for entry in
                fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
            {
                let entry = entry?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let Some(hex) = name.strip_suffix(suffix) else {
                    continue;
                };
                if let Some(hash) = Hash32::from_hex(hex) {
                    out.insert(hash);
                }
            }
        }
        Ok(out)
    }

    /// The lock a fetch of `hash` holds.
    fn fetch_lock(&self, hash: &Hash32) -> Arc<tokio::sync::Mutex<()>> {
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        fetches.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(fetches.entry(*hash).or_default())
    }

    /// Opens the partial of `hash`, checking its manifest and every piece it claims again. A
    /// partial that fails (or whose file is not the right length) is deleted.
    pub fn open_partial(&self, hash: &Hash32) -> anyhow::Result<Option<Partial>> {
        let sidecar = self.sidecar_path(hash);
        let part = self.part_path(hash);
        let bytes = match fs::read(&sidecar) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                remove_if_present(&part)?;
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", sidecar.display())),
        };
        let discard = |why: &str| -> anyhow::Result<Option<Partial>> {
            tracing::warn!(hash = %hash, why, "deleting a partial attachment that does not verify");
            remove_if_present(&part)?;
            remove_if_present(&sidecar)?;
            Ok(None)
        };
        let Ok(mut state) = serde_json::from_slice::<PartialState>(&bytes) else {
            return discard("unreadable sidecar");
        };
        if state.size == 0
            || state.size > self.bytes_max
            || state.have.len() as u64 != piece_count(state.size)
            || verify_manifest(hash, state.size, &state.manifest).is_err()
        {
            return discard("manifest does not hash to the attachment");
        }
        let file = match OpenOptions::new().read(true).write(true).open(&part) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return discard("no .part file"),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", part.display())),
        };
        if file.metadata()?.len() != state.size {
            return discard(".part file has the wrong length");
        }
        // A piece counts only if its bytes on disk still verify.
        let mut changed = false;
        for index in 0..state.have.len() {
            if !state.have[index] {
                continue;
            }
            let ok = read_piece_at(&file, state.size, index as u64)?.is_some_and(|piece| {
                verify_piece(hash, state.size, &state.manifest, index as u64, &piece).is_ok()
            });
            if !ok {
                state.have[index] = false;
                changed = true;
            }
        }
        if changed {
            write_atomic(&sidecar, &serde_json::to_vec(&state)?)?;
        }
        Ok(Some(Partial {
            hash: *hash,
            state,
            file,
            part,
            sidecar,
            written: Vec::new(),
        }))
    }

    /// Starts a partial for `hash` from a manifest, which must verify against the hash and size.
    pub fn create_partial(
        &self,
        hash: &Hash32,
        size: u64,
        manifest: Vec<Hash32>,
    ) -> Result<Partial, PieceError> {
        verify_manifest(hash, size, &manifest)?;
        if size > self.bytes_max {
            return Err(PieceError::Store(anyhow::anyhow!(
                "the file is {size} bytes, more than the {} this node takes",
                self.bytes_max
            )));
        }
        let part = self.part_path(hash);
        let sidecar = self.sidecar_path(hash);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)
            .and_then(|f| {
                f.set_len(size)?;
                f.sync_all()?;
                Ok(f)
            })
            .with_context(|| format!("cannot create {}", part.display()))?;
        let state = PartialState {
            size,
            manifest,
            have: vec![false; piece_count(size) as usize],
        };
        write_atomic(&sidecar, &serde_json::to_vec(&state).context("sidecar")?)?;
        Ok(Partial {
            hash: *hash,
            state,
            file,
            part,
            sidecar,
            written: Vec::new(),
        })
    }

    /// Turns a complete partial into the stored file, after hashing it whole once more.
    pub fn complete(&self, partial: Partial) -> anyhow::Result<()> {
        anyhow::ensure!(partial.is_complete(), "the transfer is not complete");
        partial.file.sync_all()?;
        let Partial {
            hash,
            state,
            file,
            part,
            sidecar,
            ..
        } = partial;
        drop(file);
        if hash_file(&part)? != hash {
            // Cannot happen with verified pieces unless the disk lies; keep nothing.
            remove_if_present(&part)?;
            remove_if_present(&sidecar)?;
            anyhow::bail!("the assembled file does not hash to {hash}; discarded");
        }
        self.write_manifest(&hash, &state.manifest)?;
        fs::rename(&part, self.path(&hash))
            .with_context(|| format!("cannot move {} into place", part.display()))?;
        sync_dir(&self.path(&hash))?;
        remove_if_present(&sidecar)?;
        Ok(())
    }

    /// Deletes files no live knowledge item lists: complete files (unless uploaded within
    /// [`UNCLAIMED_GRACE`] and never listed) and partials. Hashes being fetched are skipped.
    /// Returns how many were deleted.
    pub fn sweep(&self, referenced: &HashSet<Hash32>, now: SystemTime) -> anyhow::Result<usize> {
        let mut dropped = 0;
        for hash in self.hashes()? {
            if referenced.contains(&hash) {
                self.claim(&hash)?;
                continue;
            }
            if let Ok(meta) = fs::metadata(self.unclaimed_path(&hash))
                && meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_none_or(|age| age < UNCLAIMED_GRACE)
            {
                continue;
            }
            let lock = self.fetch_lock(&hash);
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            if self.remove(&hash)? {
                tracing::info!(hash = %hash, "attachment no live knowledge item lists any more: deleted");
                dropped += 1;
            }
        }
        self.counters
            .files_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        Ok(dropped)
    }

    fn distrust(&self, peer: PeerId) {
        let mut d = self.distrusted.lock().unwrap_or_else(|p| p.into_inner());
        d.insert(peer, std::time::Instant::now() + DISTRUST);
    }

    fn is_distrusted(&self, peer: &PeerId) -> bool {
        let mut d = self.distrusted.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        d.retain(|_, until| *until > now);
        d.contains_key(peer)
    }

    #[cfg(test)]
    fn tmp_files(&self) -> usize {
        ["", "partial", "manifests", "unclaimed"]
            .iter()
            .filter_map(|s| fs::read_dir(self.dir.join(s)).ok())
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
            .count()
    }
}

impl BlobSource for BlobStore {
    fn manifest(&self, hash: &Hash32) -> anyhow::Result<Option<(u64, Vec<Hash32>)>> {
        let Some(size) = self.held_size(hash) else {
            return Ok(None);
        };
        if size > self.bytes_max {
            return Ok(None);
        }
        if let Ok(bytes) = fs::read(self.manifest_path(hash))
            && bytes.len() % 32 == 0
        {
            let manifest: Vec<Hash32> = bytes
                .chunks_exact(32)
                .map(|c| {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(c);
                    Hash32(h)
                })
                .collect();
            if verify_manifest(hash, size, &manifest).is_ok() {
                return Ok(Some((size, manifest)));
            }
        }
        let file = match self.open_file(hash) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let manifest = manifest_of_file(&file, size)?;
        if verify_manifest(hash, size, &manifest).is_err() {
            anyhow::bail!("the stored file {hash} does not hash to its name");
        }
        self.write_manifest(hash, &manifest)?;
        Ok(Some((size, manifest)))
    }

    fn piece(&self, hash: &Hash32, index: u64) -> anyhow::Result<Option<Vec<u8>>> {
        let file = match self.open_file(hash) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata()?.len();
        if size > self.bytes_max {
            return Ok(None);
        }
        let piece = read_piece_at(&file, size, index)?;
        if piece.is_some() {
            self.counters.pieces_served.fetch_add(1, Ordering::Relaxed);
        }
        Ok(piece)
    }
}

// ---------------------------------------------------------------------------------------------
// Which attachments are live
// ---------------------------------------------------------------------------------------------

/// How long a computed set of listed attachments is reused while the record set is unchanged
/// (items expire without a record changing).
pub const REFERENCED_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Referenced {
    digest: kim_protocol::digest::StateDigest,
    at: std::time::Instant,
    map: Arc<HashMap<Hash32, Attachment>>,
}

/// The attachments live knowledge items list now, by hash (the first item's entry for each).
pub fn referenced(ingest: &Ingest, now_ms: u64) -> anyhow::Result<HashMap<Hash32, Attachment>> {
    let store = ingest.store();
    let mut out = HashMap::new();
    // From the store, not the search index: an attachment a live item lists must never look
    // unreferenced because the index is behind or being rebuilt.
    for entry in store.kind_entries(Kind::Knowledge) {
        let entry = entry?;
        if !entry.is_live(now_ms) {
            continue;
        }
        let Some(bytes) = store.record(&entry.id)? else {
            continue;
        };
        let record = Record::decode(bytes).map_err(|e| anyhow::anyhow!("stored record: {e}"))?;
        if let Body::Knowledge(k) = record.content.body {
            for a in k.attachments {
                out.entry(a.blake3).or_insert(a);
            }
        }
    }
    Ok(out)
}

/// [`referenced`], reused while the node's record set is unchanged and for at most
/// [`REFERENCED_TTL`] (downloads ask on every request).
pub fn referenced_cached(
    ingest: &Ingest,
    blobs: &BlobStore,
) -> anyhow::Result<Arc<HashMap<Hash32, Attachment>>> {
    let digest = ingest.digest();
    let now = std::time::Instant::now();
    if let Ok(cache) = blobs.referenced_cache.lock()
        && let Some(c) = cache.as_ref()
        && c.digest == digest
        && now.duration_since(c.at) < REFERENCED_TTL
    {
        return Ok(Arc::clone(&c.map));
    }
    let map = Arc::new(referenced(ingest, crate::ingest::system_now_ms())?);
    if let Ok(mut cache) = blobs.referenced_cache.lock() {
        *cache = Some(Referenced {
            digest,
            at: now,
            map: Arc::clone(&map),
        });
    }
    Ok(map)
}

/// Deletes what no live knowledge item lists any more (see [`BlobStore::sweep`]). Call it on
/// a blocking thread: it holds [`BlobStore::sweep_lock`] from reading the items to deleting.
pub fn sweep(ingest: &Ingest, blobs: &BlobStore) -> anyhow::Result<usize> {
    let _guard = blobs.sweep_lock.blocking_lock();
    let live: HashSet<Hash32> = referenced_cached(ingest, blobs)?.keys().copied().collect();
    blobs.sweep(&live, SystemTime::now())
}

/// How often the node sweeps without a change of its record set (expiry).
pub const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(60);
/// How often the node checks whether its record set changed.
pub const SWEEP_CHECK: Duration = Duration::from_secs(2);

/// Runs [`sweep`] whenever the node's record set changed (and at least every
/// [`SWEEP_INTERVAL_MAX`]) until `shutdown`.
pub async fn sweeper(
    ingest: Arc<Ingest>,
    blobs: Arc<BlobStore>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut timer = tokio::time::interval(SWEEP_CHECK);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(kim_protocol::digest::StateDigest, tokio::time::Instant)> = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = timer.tick() => {}
        }
        let digest = ingest.digest();
        let now = tokio::time::Instant::now();
        if last
            .as_ref()
            .is_some_and(|(d, at)| *d == digest && now.duration_since(*at) < SWEEP_INTERVAL_MAX)
        {
            continue;
        }
        let (i, b) = (Arc::clone(&ingest), Arc::clone(&blobs));
        match tokio::task::spawn_blocking(move || sweep(&i, &b)).await {
            Ok(Ok(n)) => {
                if n > 0 {
                    tracing::debug!(dropped = n, "attachment sweep");
                }
                last = Some((digest, now));
            }
            Ok(Err(e)) => tracing::warn!(cause = %e, "attachment sweep failed; will retry"),
            Err(e) => tracing::warn!(cause = %e, "attachment sweep task failed"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fetching
// ---------------------------------------------------------------------------------------------

/// Why a fetch did not produce the file.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the file is {size} bytes, more than the {max} this node fetches (blob_bytes_max)")]
    TooLarge { size: u64, max: u64 },
    #[error("no member's node is connected to fetch the file from")]
    NoPeers,
    #[error("no connected member's node has the file ({have} of {pieces} pieces are here)")]
    Unavailable { have: u64, pieces: u64 },
    #[error("local attachment store failed: {0}")]
    Store(String),
}

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Verified pieces received now.
    pub pieces_fetched: u64,
    /// Pieces that were already here (a resumed transfer).
    pub pieces_resumed: u64,
    /// Peers that sent bad data and were dropped.
    pub peers_rejected: usize,
    /// Whether the file was already complete.
    pub already_held: bool,
}

fn store_err(e: impl std::fmt::Display) -> FetchError {
    FetchError::Store(e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f).await.map_err(store_err)
}

/// Fetches attachment `hash` of `size` bytes from connected members' nodes into the store:
/// asks several for the manifest, keeps those whose manifest verifies, then pulls the missing
/// pieces from all of them at once, verifying each on arrival. Resumes a partial left by an
/// earlier attempt; a peer sending bad data is penalised and asked no more. What verified is
/// kept even if the fetch fails, so the next attempt resumes.
pub async fn fetch(
    net: &NetClient,
    store: &Arc<BlobStore>,
    hash: Hash32,
    size: u64,
) -> Result<FetchReport, FetchError> {
    if size > store.bytes_max() {
        return Err(FetchError::TooLarge {
            size,
            max: store.bytes_max(),
        });
    }
    let lock = store.fetch_lock(&hash);
    let _guard = lock.lock().await;
    let mut report = FetchReport::default();
    if store.held_size(&hash).is_some() {
        report.already_held = true;
        return Ok(report);
    }
    let peers: Vec<PeerId> = net
        .peers()
        .await
        .map_err(store_err)?
        .into_iter()
        .filter(|p| !p.guest && !store.is_distrusted(&p.peer_id))
        .map(|p| p.peer_id)
        .collect();
    let partial = {
        let s = Arc::clone(store);
        blocking(move || s.open_partial(&hash))
            .await?
            .map_err(store_err)?
    };
    let partial = match partial {
        Some(p) if p.size() != size => {
            // The sidecar verified, so this cannot be another file; keep nothing of it.
            let s = Arc::clone(store);
            blocking(move || s.remove(&hash))
                .await?
                .map_err(store_err)?;
            drop(p);
            None
        }
        other => other,
    };
    if peers.is_empty() {
        return Err(FetchError::NoPeers);
    }

    // Who has it: ask several for the manifest at once.
    let asks = peers.iter().take(MANIFEST_ASKS_MAX).map(|peer| {
        let net = net.clone();
        let peer = *peer;
        async move {
            (
                peer,
                net.blob_request(peer, BlobAsk::Manifest { hash }).await,
            )
        }
    });
    let answers = libp2p::futures::future::join_all(asks).await;
    let mut sources = Vec::new();
    let mut manifest: Option<Vec<Hash32>> = None;
    for (peer, answer) in answers {
        match answer {
            Ok(BlobAnswer::Manifest {
                size: s,
                manifest: m,
            }) => {
                if s != size || verify_manifest(&hash, size, &m).is_err() {
                    reject(net, store, peer, "a blob manifest that does not verify").await;
                    report.peers_rejected += 1;
                    continue;
                }
                manifest.get_or_insert(m);
                sources.push(peer);
            }
            Ok(BlobAnswer::NotFound) => {}
            Ok(BlobAnswer::Refused(code)) => {
                tracing::debug!(peer = %peer, code = %code, "peer refused a blob manifest");
            }
            Ok(BlobAnswer::Piece(_)) => {
                reject(net, store, peer, "a piece where a manifest was asked for").await;
                report.peers_rejected += 1;
            }
            Err(e) => tracing::debug!(peer = %peer, cause = %e, "blob manifest request failed"),
        }
    }
    let partial = match (partial, manifest) {
        (Some(p), _) => p,
        (None, Some(m)) => {
            let s = Arc::clone(store);
            blocking(move || s.create_partial(&hash, size, m))
                .await?
                .map_err(store_err)?
        }
        (None, None) => {
            return Err(FetchError::Unavailable {
                have: 0,
                pieces: piece_count(size),
            });
        }
    };
    report.pieces_resumed = partial.have();
    let partial = Arc::new(Mutex::new(partial));
    let missing = partial.lock().map(|p| p.missing()).unwrap_or_default();
    let queue = Arc::new(Mutex::new(missing.into_iter().collect::<VecDeque<u64>>()));
    let fetched = Arc::new(AtomicU64::new(0));

    // Rounds: every source pulls pieces until the queue is empty; a source that fails or lies
    // is dropped and its pieces go back. Each round ends with the queue empty or sources gone.
    while !sources.is_empty() && queue.lock().is_ok_and(|q| !q.is_empty()) {
        let workers = sources.iter().flat_map(|peer| {
            (0..PIECES_IN_FLIGHT_PER_PEER).map(|_| {
                pull(
                    net,
                    store,
                    hash,
                    *peer,
                    Arc::clone(&queue),
                    Arc::clone(&partial),
                    Arc::clone(&fetched),
                )
            })
        });
        let outcomes = libp2p::futures::future::join_all(workers).await;
        let mut dropped: HashSet<PeerId> = HashSet::new();
        for (peer, outcome) in outcomes {
            match outcome {
                PullEnd::Done => {}
                PullEnd::Gone => {
                    dropped.insert(peer);
                }
                PullEnd::Lied => {
                    if dropped.insert(peer) || !store.is_distrusted(&peer) {
                        report.peers_rejected += 1;
                    }
                }
                PullEnd::Store(e) => return Err(FetchError::Store(e)),
            }
        }
        sources.retain(|p| !dropped.contains(p));
    }
    report.pieces_fetched = fetched.load(Ordering::Relaxed);
    let partial = Arc::try_unwrap(partial)
        .map_err(|_| FetchError::Store("a piece worker outlived the fetch".into()))?
        .into_inner()
        .map_err(store_err)?;
    if !partial.is_complete() {
        if partial.have() == 0 {
            // Nothing verified arrived: keep no trace of the attempt.
            drop(partial);
            let s = Arc::clone(store);
            blocking(move || s.remove(&hash))
                .await?
                .map_err(store_err)?;
            return Err(FetchError::Unavailable {
                have: 0,
                pieces: piece_count(size),
            });
        }
        let mut partial = partial;
        let have = partial.have();
        blocking(move || partial.persist())
            .await?
            .map_err(store_err)?;
        return Err(FetchError::Unavailable {
            have,
            pieces: piece_count(size),
        });
    }
    let s = Arc::clone(store);
    blocking(move || s.complete(partial))
        .await?
        .map_err(store_err)?;
    tracing::info!(hash = %hash, size, fetched = report.pieces_fetched,
        resumed = report.pieces_resumed, "attachment fetched and verified");
    Ok(report)
}

enum PullEnd {
    Done,
    Gone,
    Lied,
    Store(String),
}

async fn reject(net: &NetClient, store: &BlobStore, peer: PeerId, reason: &'static str) {
    store
        .counters
        .pieces_rejected
        .fetch_add(1, Ordering::Relaxed);
    let first = !store.is_distrusted(&peer);
    store.distrust(peer);
    tracing::warn!(peer = %peer, reason, "peer sent bad attachment data; not asking it again");
    if first && let Err(e) = net.penalise(peer, POINTS_BAD_BLOB, reason).await {
        tracing::debug!(cause = %e, "cannot penalise a peer");
    }
}

/// One worker: pulls pieces from `peer` until the queue is empty or the peer fails.
async fn pull(
    net: &NetClient,
    store: &Arc<BlobStore>,
    hash: Hash32,
    peer: PeerId,
    queue: Arc<Mutex<VecDeque<u64>>>,
    partial: Arc<Mutex<Partial>>,
    fetched: Arc<AtomicU64>,
) -> (PeerId, PullEnd) {
    let give_back = |index: u64| {
        if let Ok(mut q) = queue.lock() {
            q.push_back(index);
        }
    };
    loop {
        if store.is_distrusted(&peer) {
            return (peer, PullEnd::Lied);
        }
        let Some(index) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
            return (peer, PullEnd::Done);
        };
        let bytes = match net.blob_request(peer, BlobAsk::Piece { hash, index }).await {
            Ok(BlobAnswer::Piece(bytes)) => bytes,
            Ok(other) => {
                give_back(index);
                tracing::debug!(peer = %peer, index, answer = ?std::mem::discriminant(&other), "peer did not send a piece");
                return (peer, PullEnd::Gone);
            }
            Err(e) => {
                give_back(index);
                tracing::debug!(peer = %peer, index, cause = %e, "piece request failed");
                return (peer, PullEnd::Gone);
            }
        };
        let p = Arc::clone(&partial);
        let written = tokio::task::spawn_blocking(move || {
            p.lock()
                .map_err(|_| PieceError::Store(anyhow::anyhow!("partial lock poisoned")))
                .and_then(|mut p| p.put_piece(index, &bytes))
        })
        .await;
        match written {
            Ok(Ok(())) => {
                fetched.fetch_add(1, Ordering::Relaxed);
                store
                    .counters
                    .pieces_fetched
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(PieceError::Invalid(e))) => {
                give_back(index);
                tracing::debug!(peer = %peer, index, cause = %e, "piece failed verification");
                reject(net, store, peer, "a blob piece that does not verify").await;
                return (peer, PullEnd::Lied);
            }
            Ok(Err(PieceError::Store(e))) => {
                give_back(index);
                return (peer, PullEnd::Store(e.to_string()));
            }
            Err(e) => {
                give_back(index);
                return (peer, PullEnd::Store(e.to_string()));
            }
        }
    }
}

/// Requests through the network fail with this when the peer is gone or refuses.
impl From<NetError> for FetchError {
    fn from(e: NetError) -> Self {
        FetchError::Store(e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| ((i as u64 * 2_654_435_761) >> 7) as u8 ^ seed)
            .collect()
    }

    fn store(dir: &tempfile::TempDir) -> BlobStore {
        BlobStore::open(dir.path().join("blobs"), 8 * 1024 * 1024).unwrap()
    }

    #[test]
    fn uploads_are_stored_under_their_hash_and_served_piece_by_piece() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let bytes = data(3 * BLOB_PIECE_BYTES + BLOB_PIECE_BYTES / 2, 1);
        let hash = s.put(&bytes).unwrap();
        assert_eq!(hash.0, *blake3::hash(&bytes).as_bytes());
        assert_eq!(fs::read(s.path(&hash)).unwrap(), bytes);
        assert_eq!(
            s.held(&hash),
            Held::Complete {
                size: bytes.len() as u64
            }
        );
        let (size, manifest) = s.manifest(&hash).unwrap().unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(manifest, kim_protocol::blob::manifest_of(&bytes));
        let mut joined = Vec::new();
        for i in 0..4 {
            let piece = s.piece(&hash, i).unwrap().unwrap();
            verify_piece(&hash, size, &manifest, i, &piece).unwrap();
            joined.extend(piece);
        }
        assert_eq!(joined, bytes);
        assert!(s.piece(&hash, 4).unwrap().is_none());
        // The manifest cache is rebuilt when lost, and a forged one is not believed.
        fs::write(s.manifest_path(&hash), [7u8; 128]).unwrap();
        assert_eq!(s.manifest(&hash).unwrap().unwrap().1, manifest);
        assert_eq!(s.tmp_files(), 0);
        // Too large and empty uploads are refused and leave nothing.
        assert!(s.put(&data(8 * 1024 * 1024 + 1, 2)).is_err());
        assert!(s.put(&[]).is_err());
        assert_eq!(s.hashes().unwrap().len(), 1);
    }

    #[test]
    fn a_partial_resumes_across_reopening_with_exactly_the_verified_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(3 * BLOB_PIECE_BYTES + 100, 3);
        let hash = Hash32(*blake3::hash(&bytes).as_bytes());
        let manifest = kim_protocol::blob::manifest_of(&bytes);
        let size = bytes.len() as u64;
        let piece =
            |i: usize| &bytes[i * BLOB_PIECE_BYTES..((i + 1) * BLOB_PIECE_BYTES).min(bytes.len())];
        {
            let s = store(&dir);
            // A manifest that does not hash to the root is refused before anything is kept.
            let mut forged = manifest.clone();
            forged[1].0[0] ^= 1;
            assert!(matches!(
                s.create_partial(&hash, size, forged),
                Err(PieceError::Invalid(BlobError::ManifestMismatch))
            ));
            assert_eq!(s.held(&hash), Held::Absent);
            let mut p = s.create_partial(&hash, size, manifest.clone()).unwrap();
            p.put_piece(0, piece(0)).unwrap();
            // Garbage is refused and not written.
            let mut bad = piece(2).to_vec();
            bad[5] ^= 0xff;
            assert!(matches!(
                p.put_piece(2, &bad),
                Err(PieceError::Invalid(BlobError::PieceMismatch { index: 2 }))
            ));
            assert!(matches!(
                p.put_piece(3, &piece(3)[..50]),
                Err(PieceError::Invalid(BlobError::PieceLength { .. }))
            ));
            p.put_piece(2, piece(2)).unwrap();
            assert_eq!(p.missing(), vec![1, 3]);
            // Written but not yet persisted: a restart now would not count them.
            assert_eq!(
                s.held(&hash),
                Held::Partial {
                    size,
                    have: 0,
                    pieces: 4
                }
            );
            p.persist().unwrap();
        }
        // Reopened (a restart): the same two pieces, checked again.
        let s = store(&dir);
        assert_eq!(
            s.held(&hash),
            Held::Partial {
                size,
                have: 2,
                pieces: 4
            }
        );
        let mut p = s.open_partial(&hash).unwrap().unwrap();
        assert_eq!(p.missing(), vec![1, 3]);
        p.put_piece(1, piece(1)).unwrap();
        p.put_piece(3, piece(3)).unwrap();
        s.complete(p).unwrap();
        assert_eq!(fs::read(s.path(&hash)).unwrap(), bytes);
        assert_eq!(s.held(&hash), Held::Complete { size });
        assert!(!s.part_path(&hash).exists() && !s.sidecar_path(&hash).exists());
        assert_eq!(s.tmp_files(), 0);
    }

    #[test]
    fn a_partial_whose_bytes_or_manifest_were_tampered_with_is_dropped_or_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(2 * BLOB_PIECE_BYTES + 1, 4);
        let hash = Hash32(*blake3::hash(&bytes).as_bytes());
        let manifest = kim_protocol::blob::manifest_of(&bytes);
        let size = bytes.len() as u64;
        let s = store(&dir);
        let mut p = s.create_partial(&hash, size, manifest.clone()).unwrap();
        p.put_piece(0, &bytes[..BLOB_PIECE_BYTES]).unwrap();
        p.put_piece(1, &bytes[BLOB_PIECE_BYTES..2 * BLOB_PIECE_BYTES])
            .unwrap();
        p.persist().unwrap();
        drop(p);
        // Piece 1's bytes rot on disk: it no longer counts.
        let f = OpenOptions::new()
            .write(true)
            .open(s.part_path(&hash))
            .unwrap();
        f.write_all_at(b"rot", BLOB_PIECE_BYTES as u64 + 10)
            .unwrap();
        let p = s.open_partial(&hash).unwrap().unwrap();
        assert_eq!(p.missing(), vec![1, 2]);
        drop(p);
        // A sidecar whose manifest no longer hashes to the root: the partial is deleted.
        let mut state: PartialState =
            serde_json::from_slice(&fs::read(s.sidecar_path(&hash)).unwrap()).unwrap();
        state.manifest[0].0[3] ^= 1;
        fs::write(s.sidecar_path(&hash), serde_json::to_vec(&state).unwrap()).unwrap();
        assert!(s.open_partial(&hash).unwrap().is_none());
        assert!(!s.part_path(&hash).exists() && !s.sidecar_path(&hash).exists());
        assert_eq!(s.held(&hash), Held::Absent);
    }

    #[test]
    fn sweeping_keeps_listed_files_and_fresh_uploads_and_deletes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let listed = s.put(&data(1000, 5)).unwrap();
        let fresh = s.put(&data(2000, 6)).unwrap();
        let referenced: HashSet<Hash32> = [listed].into();
        // Listed: claimed (the grace no longer applies once it is listed).
        assert_eq!(s.sweep(&referenced, SystemTime::now()).unwrap(), 0);
        assert!(!s.unclaimed_path(&listed).exists());
        assert!(s.unclaimed_path(&fresh).exists());
        // The item is withdrawn: the listed file goes, the fresh upload stays until its grace ends.
        assert_eq!(s.sweep(&HashSet::new(), SystemTime::now()).unwrap(), 1);
        assert_eq!(s.held(&listed), Held::Absent);
        assert!(s.held_size(&fresh).is_some());
        let later = SystemTime::now() + UNCLAIMED_GRACE + Duration::from_secs(1);
        assert_eq!(s.sweep(&HashSet::new(), later).unwrap(), 1);
        assert_eq!(s.hashes().unwrap().len(), 0);
    }

    #[test]
    fn temporary_files_left_by_a_crash_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        fs::write(s.dir().join("partial").join("x.123-4.tmp"), b"half").unwrap();
        fs::write(s.dir().join("abc.tmp"), b"half").unwrap();
        drop(s);
        let s = store(&dir);
        assert_eq!(s.tmp_files(), 0);
    }

    #[test]
    fn messages_round_trip_and_limits_hold() {
        let hash = Hash32([9; 32]);
        for ask in [
            BlobAsk::Manifest { hash },
            BlobAsk::Piece { hash, index: 4095 },
        ] {
            assert_eq!(BlobAsk::decode(&ask.encode()).unwrap(), ask);
        }
        for answer in [
            BlobAnswer::Manifest {
                size: 5_000_000,
                manifest: vec![Hash32([1; 32]); 5],
            },
            BlobAnswer::Piece(vec![3; BLOB_PIECE_BYTES]),
            BlobAnswer::NotFound,
            BlobAnswer::Refused("blobs.not_member".into()),
        ] {
            let bytes = answer.encode();
            assert!(bytes.len() <= BLOB_FRAME_BYTES_MAX);
            assert_eq!(BlobAnswer::decode(&bytes).unwrap(), answer);
        }
        let mut big = vec![1u8];
        big.extend(vec![0u8; BLOB_PIECE_BYTES + 1]);
        assert!(BlobAnswer::decode(&big).is_err());
        let mut many = vec![0u8, 1];
        put_varint(&mut many, MANIFEST_PIECES_MAX as u64 + 1);
        assert!(BlobAnswer::decode(&many).is_err());
        assert!(BlobAsk::decode(&[0, 1, 2]).is_err());
        assert!(BlobAsk::decode(&[7]).is_err());
        let mut trailing = BlobAsk::Manifest { hash }.encode();
        trailing.push(0);
        assert!(BlobAsk::decode(&trailing).is_err());
    }
}
