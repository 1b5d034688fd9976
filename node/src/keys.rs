//! The region key files of a data directory during a key rotation, and their recovery after a
//! crash.
//!
//! `region.key` is the key the node signs its region's records with. A rotation
//! ([`crate::service::Service::rotate_key`]) goes:
//! 1. the new key is written to `region.key.next` (mode 0600, synced) *before* anything is
//!    signed, so a key the federation is told about is never lost;
//! 2. the old key signs the key rotation record, which is stored (flushed) and announced;
//! 3. the old key is copied to `region.key.retired-<unix ms>`, then `region.key.next` is renamed
//!    over `region.key` (atomic), so `region.key` always holds a usable key.
//!
//! A crash between 1 and 3 leaves `region.key.next` behind. At start, [`recover`] installs it
//! when the membership state maps it to this region (the rotation was stored, so peers may
//! already follow it), and deletes it otherwise (the rotation was never stored, so nobody has
//! heard of that key).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use kim_protocol::PublicKey;
use kim_protocol::membership::MembershipState;

use crate::config::{DataDir, write_secret};

/// The key files of one data directory.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    data: DataDir,
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No interrupted rotation.
    Nothing,
    /// The rotation had been stored: the new key is now `region.key`, the old one kept.
    Installed { key: PublicKey, retired: PathBuf },
    /// The rotation had not been stored: the unused new key was deleted.
    Discarded { key: PublicKey },
}

fn public(key: &SigningKey) -> PublicKey {
    PublicKey(key.verifying_key().to_bytes())
}

fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the key file {}", path.display()))?;
    let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "{} is not a 32-byte ed25519 key: restore it from your backup",
            path.display()
        )
    })?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Makes renames and new files in `dir` durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

impl KeyFiles {
    pub fn new(data: &DataDir) -> KeyFiles {
        KeyFiles { data: data.clone() }
    }

    /// The region key in use.
    pub fn current_path(&self) -> PathBuf {
        self.data.key()
    }

    /// The new key of a rotation in progress.
    pub fn next_path(&self) -> PathBuf {
        self.data.root.join("region.key.next")
    }

    /// Where a key retired at `at_ms` is kept.
    pub fn retired_path(&self, at_ms: u64) -> PathBuf {
        self.data.root.join(format!("region.key.retired-{at_ms}"))
    }

    /// Writes the new key of a rotation durably; refuses if one is already there.
    pub fn write_next(&self, key: &SigningKey) -> anyhow::Result<()> {
        let path = self.next_path();
        if path.exists() {
            anyhow::bail!(
                "{} exists: another rotation is unfinished; restart the node to complete or \
                 discard it",
                path.display()
            );
        }
        write_secret(&path, &key.to_bytes())?;
        sync_dir(&self.data.root)
    }

    /// Deletes the new key of a rotation that did not happen.
    pub fn discard_next(&self) -> anyhow::Result<()> {
        let path = self.next_path();
        std::fs::remove_file(&path).with_context(|| format!("cannot delete {}", path.display()))?;
        sync_dir(&self.data.root)
    }

    /// Makes `region.key.next` the region key, keeping the old key as
    /// `region.key.retired-<at_ms>`; returns that path. `region.key` exists throughout.
    pub fn install_next(&self, at_ms: u64) -> anyhow::Result<PathBuf> {
        let current = self.current_path();
        let old = std::fs::read(&current)
            .with_context(|| format!("cannot read the region key {}", current.display()))?;
        let mut retired = self.retired_path(at_ms);
        let mut n = 1u32;
        // A copy left by an earlier, interrupted attempt with the same key is reused.
        while retired.exists() && std::fs::read(&retired).ok().as_deref() != Some(old.as_slice()) {
            retired = self
                .data
                .root
                .join(format!("region.key.retired-{at_ms}.{n}"));
            n += 1;
        }
        if !retired.exists() {
            write_secret(&retired, &old)?;
        }
        std::fs::rename(self.next_path(), &current).with_context(|| {
            format!(
                "cannot move {} to {}",
                self.next_path().display(),
                current.display()
            )
        })?;
        sync_dir(&self.data.root)?;
        Ok(retired)
    }

    /// The new key of an interrupted rotation, if any.
    fn load_next(&self) -> anyhow::Result<Option<SigningKey>> {
        let path = self.next_path();
        if !path.exists() {
            return Ok(None);
        }
        read_key(&path).map(Some)
    }
}

/// Completes or undoes a rotation a crash interrupted, judged by the stored membership: the new
/// key is installed when the membership maps it to the region of `region.key` (its rotation
/// record was stored), and deleted otherwise.
pub fn recover(
    data: &DataDir,
    membership: &MembershipState,
    now_ms: u64,
) -> anyhow::Result<Recovery> {
    let files = KeyFiles::new(data);
    let Some(next) = files.load_next()? else {
        return Ok(Recovery::Nothing);
    };
    let next_key = public(&next);
    let current = read_key(&files.current_path())?;
    let current_key = public(&current);
    let region = membership.region_of(&current_key).unwrap_or(current_key);
    if next_key != current_key && membership.region_of(&next_key) == Some(region) {
        let retired = files.install_next(now_ms)?;
        tracing::warn!(
            region = %region,
            key = %next_key,
            retired = %retired.display(),
            "finished an interrupted key rotation: the new key is now region.key"
        );
        Ok(Recovery::Installed {
            key: next_key,
            retired,
        })
    } else {
        files.discard_next()?;
        tracing::warn!(
            region = %region,
            key = %next_key,
            "discarded the new key of a key rotation that was never stored"
        );
        Ok(Recovery::Discarded { key: next_key })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind, Record};
    use kim_protocol::membership::{
        Charter, Founder, KeyRotation, ThresholdRule, evaluate, federation_id,
    };

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// A one-founder federation's membership, with or without the rotation old → new.
    fn membership(old: &SigningKey, new: &SigningKey, rotated: bool) -> MembershipState {
        let charter = Charter {
            name: "Test".into(),
            founders: vec![Founder {
                key: public(old),
                name: "Steiermark".into(),
                nuts: vec!["AT22".into()],
            }],
            admission: ThresholdRule::Majority,
            removal: ThresholdRule::Majority,
            created_at_ms: 1,
        };
        let federation = federation_id(&charter.to_bytes().unwrap());
        let mut records = Vec::new();
        if rotated {
            let content = Content {
                format: FORMAT_VERSION,
                federation,
                author: public(old),
                kind: Kind::KeyRotation,
                key: "rotation".into(),
                revision: 1,
                created_at_ms: 10,
                expires_at_ms: None,
                body: Body::KeyRotation(KeyRotation::new(&federation, &public(old), new)),
            };
            records.push(Record::sign(&content, old).unwrap());
        }
        evaluate(&charter, federation, records.iter())
    }

    fn data_dir(old: &SigningKey, next: Option<&SigningKey>) -> (tempfile::TempDir, DataDir) {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        write_secret(&data.key(), &old.to_bytes()).unwrap();
        if let Some(next) = next {
            KeyFiles::new(&data).write_next(next).unwrap();
        }
        (dir, data)
    }

    #[test]
    fn a_stored_rotation_is_completed_at_start() {
        let (old, new) = (key(1), key(2));
        let (_dir, data) = data_dir(&old, Some(&new));
        let outcome = recover(&data, &membership(&old, &new, true), 77).unwrap();
        let Recovery::Installed { key, retired } = outcome else {
            panic!("not installed: {outcome:?}");
        };
        assert_eq!(key, public(&new));
        assert_eq!(public(&data.load_key().unwrap()), public(&new));
        assert_eq!(std::fs::read(&retired).unwrap(), old.to_bytes());
        assert!(retired.ends_with("region.key.retired-77"));
        assert!(!KeyFiles::new(&data).next_path().exists());
        // Nothing left to do at the next start.
        assert_eq!(
            recover(&data, &membership(&old, &new, true), 78).unwrap(),
            Recovery::Nothing
        );
    }

    #[test]
    fn a_rotation_that_was_never_stored_is_discarded() {
        let (old, new) = (key(1), key(2));
        let (_dir, data) = data_dir(&old, Some(&new));
        let outcome = recover(&data, &membership(&old, &new, false), 77).unwrap();
        assert_eq!(outcome, Recovery::Discarded { key: public(&new) });
        assert_eq!(public(&data.load_key().unwrap()), public(&old));
        assert!(!KeyFiles::new(&data).next_path().exists());
        assert!(!data.root.join("region.key.retired-77").exists());
    }

    #[test]
    fn a_crash_after_the_old_key_was_copied_completes_without_a_second_copy() {
        let (old, new) = (key(1), key(2));
        let (_dir, data) = data_dir(&old, Some(&new));
        // The copy of step 3 was written, the rename was not.
        write_secret(&data.root.join("region.key.retired-77"), &old.to_bytes()).unwrap();
        let outcome = recover(&data, &membership(&old, &new, true), 77).unwrap();
        assert!(matches!(outcome, Recovery::Installed { .. }), "{outcome:?}");
        assert_eq!(public(&data.load_key().unwrap()), public(&new));
        let retired: Vec<_> = std::fs::read_dir(&data.root)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("retired"))
            .collect();
        assert_eq!(retired.len(), 1);
    }

    #[test]
    fn no_next_key_means_nothing_to_do_and_a_second_rotation_in_flight_is_refused() {
        let (old, new) = (key(1), key(2));
        let (_dir, data) = data_dir(&old, None);
        assert_eq!(
            recover(&data, &membership(&old, &new, false), 1).unwrap(),
            Recovery::Nothing
        );
        let files = KeyFiles::new(&data);
        files.write_next(&new).unwrap();
        assert!(files.write_next(&key(3)).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(files.next_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
