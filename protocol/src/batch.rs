//! The randomised ed25519 batch equation of SPEC.md §3.7, with each author's key terms gathered.
//!
//! For signatures `(Rᵢ, Sᵢ)` by keys `Aᵢ` over messages `Mᵢ`, with `kᵢ = SHA-512(Rᵢ ‖ Aᵢ ‖ Mᵢ)`
//! and 128-bit scalars `zᵢ`, the batch holds when
//!
//! `[−Σ zᵢSᵢ]B + Σ [zᵢ]Rᵢ + Σ [zᵢkᵢ]Aᵢ = 0`.
//!
//! This is the equation `ed25519_dalek::verify_batch` checks, term for term, with one
//! difference in how it is computed: the terms of one key are summed into one,
//! `Σᵢ [zᵢkᵢ]A = [Σᵢ zᵢkᵢ]A`, so a batch of n records from one author is a multiscalar
//! multiplication of n + 2 points instead of 2n + 1. Records of a batch usually come from few
//! members (a catch-up, a member's burst of publications), and the multiplication is most of a
//! batch verification's cost.
//!
//! Scalars are reduced modulo the group order L, so the gathered sum differs from the separate
//! terms by a multiple of `[L]A`. That is the identity exactly when `A` has no small-order
//! component (`A` is torsion-free), which holds for every key made as `[a]B`, that is every
//! honest key. A key with a torsion component keeps its separate terms, so for every input
//! the equation's verdict is the one the separate terms give with the same `zᵢ`. Checking
//! torsion costs one scalar multiplication, so only a key with at least [`GATHER_MIN`] records
//! in the batch is checked and gathered.
//!
//! The `zᵢ` come from a BLAKE3 stream keyed by a transcript of every `kᵢ` hash and every `Sᵢ`,
//! deterministic as the reference's are: a signer cannot know them before fixing the batch's
//! signatures.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha512};

/// A key with fewer records than this in a batch keeps its separate terms: checking that it is
/// torsion-free costs a scalar multiplication (about 46 us here), and each point left out of
/// the multiscalar multiplication saves about 5-8 us, so 8 records only broke even
/// (`protocol/examples/verify_batch.rs`).
pub(crate) const GATHER_MIN: usize = 16;

/// Context string of the BLAKE3 key derivation for the `zᵢ`.
const Z_CONTEXT: &str = "kim 2026-11 ed25519 batch verification scalars";

/// One signature of a batch: its 64 bytes, the index of its key in the batch's key list, and
/// the signed message in pieces (hashed in order, never copied together).
#[derive(Debug)]
pub(crate) struct Item<'a> {
    pub signature: &'a [u8; 64],
    pub key: usize,
    pub message: [&'a [u8]; 2],
}

/// Whether the batch equation holds for `items`, signed by `keys` (decoded, not weak).
/// False also when an `S` is not canonical or an `R` is not a curve point: then, as with a
/// failed equation, the caller checks each signature alone.
pub(crate) fn equation_holds(items: &[Item<'_>], keys: &[VerifyingKey]) -> bool {
    equation(items, keys, Gather::Checked)
}

/// Which keys' terms are gathered into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gather {
    /// Keys with at least [`GATHER_MIN`] records that are torsion-free (what the node does).
    Checked,
    /// None: the separate terms, exactly the reference's equation (tests compare with it).
    #[cfg(test)]
    Never,
    /// Every key with at least [`GATHER_MIN`] records, torsion-free or not: wrong for keys with
    /// a torsion component (tests show why the check is needed).
    #[cfg(test)]
    Unchecked,
}

/// A signature's `R` and `S` halves.
fn split_signature(signature: &[u8; 64]) -> ([u8; 32], [u8; 32]) {
    let mut r = [0u8; 32];
    let mut s = [0u8; 32];
    r.copy_from_slice(&signature[..32]);
    s.copy_from_slice(&signature[32..]);
    (r, s)
}

fn equation(items: &[Item<'_>], keys: &[VerifyingKey], gather: Gather) -> bool {
    if items.is_empty() {
        return true;
    }
    let mut transcript = blake3::Hasher::new_derive_key(Z_CONTEXT);
    transcript.update(&(items.len() as u64).to_le_bytes());
    let mut hrams = Vec::with_capacity(items.len());
    let mut ss = Vec::with_capacity(items.len());
    let mut rs = Vec::with_capacity(items.len());
    for item in items {
        let Some(key) = keys.get(item.key) else {
            return false;
        };
        let (r, s) = split_signature(item.signature);
        let mut h = Sha512::new();
        h.update(r);
        h.update(key.as_bytes());
        for piece in item.message {
            h.update(piece);
        }
        let hram: [u8; 64] = h.finalize().into();
        transcript.update(&hram);
        transcript.update(&s);
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s)) else {
            return false;
        };
        let Some(r) = CompressedEdwardsY(r).decompress() else {
            return false;
        };
        hrams.push(Scalar::from_bytes_mod_order_wide(&hram));
        ss.push(s);
        rs.push(r);
    }
    let mut stream = transcript.finalize_xof();
    let zs: Vec<Scalar> = (0..items.len())
        .map(|_| {
            let mut z = [0u8; 16];
            stream.fill(&mut z);
            Scalar::from(u128::from_le_bytes(z))
        })
        .collect();

    // Which keys are gathered: enough records, and torsion-free.
    let mut counts = vec![0usize; keys.len()];
    for item in items {
        counts[item.key] += 1;
    }
    let gathered: Vec<bool> = keys
        .iter()
        .zip(&counts)
        .map(|(key, &n)| match gather {
            Gather::Checked => n >= GATHER_MIN && key.to_edwards().is_torsion_free(),
            #[cfg(test)]
            Gather::Never => false,
            #[cfg(test)]
            Gather::Unchecked => n >= GATHER_MIN,
        })
        .collect();
    let mut key_coefficients = vec![Scalar::ZERO; keys.len()];

    let mut scalars = Vec::with_capacity(1 + 2 * items.len());
    let mut points = Vec::with_capacity(1 + 2 * items.len());
    let mut b_coefficient = Scalar::ZERO;
    scalars.push(Scalar::ZERO); // the basepoint's, filled in below
    points.push(ED25519_BASEPOINT_POINT);
    for (i, item) in items.iter().enumerate() {
        let z = zs[i];
        b_coefficient += z * ss[i];
        scalars.push(z);
        points.push(rs[i]);
        let zk = z * hrams[i];
        if gathered[item.key] {
            key_coefficients[item.key] += zk;
        } else {
            scalars.push(zk);
            points.push(keys[item.key].to_edwards());
        }
    }
    scalars[0] = -b_coefficient;
    for (k, key) in keys.iter().enumerate() {
        if gathered[k] {
            scalars.push(key_coefficients[k]);
            points.push(key.to_edwards());
        }
    }
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    /// A signature over `kim/record/v1 ‖ message`, as the batch takes it.
    struct Signed {
        signature: [u8; 64],
        message: Vec<u8>,
    }

    fn items<'a>(signed: &'a [(usize, Signed)]) -> Vec<Item<'a>> {
        signed
            .iter()
            .map(|(key, s)| Item {
                signature: &s.signature,
                key: *key,
                message: [b"kim/record/v1".as_slice(), s.message.as_slice()],
            })
            .collect()
    }

    fn honest(keys: &[SigningKey], per_key: &[usize]) -> Vec<(usize, Signed)> {
        let mut out = Vec::new();
        for (k, (key, &n)) in keys.iter().zip(per_key).enumerate() {
            for i in 0..n {
                let message = format!("record {i} of key {k}").into_bytes();
                let mut full = b"kim/record/v1".to_vec();
                full.extend_from_slice(&message);
                out.push((
                    k,
                    Signed {
                        signature: key.sign(&full).to_bytes(),
                        message,
                    },
                ));
            }
        }
        // Interleaved, as a batch from several members arrives.
        out.sort_by_key(|(_, s)| blake3::hash(&s.signature).as_bytes()[0]);
        out
    }

    fn verifying(keys: &[SigningKey]) -> Vec<VerifyingKey> {
        keys.iter().map(SigningKey::verifying_key).collect()
    }

    /// What ed25519-dalek's own batch verification says of the same signatures.
    fn reference(signed: &[(usize, Signed)], keys: &[VerifyingKey]) -> bool {
        let messages: Vec<Vec<u8>> = signed
            .iter()
            .map(|(_, s)| [b"kim/record/v1".as_slice(), &s.message].concat())
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let signatures: Vec<ed25519_dalek::Signature> = signed
            .iter()
            .map(|(_, s)| ed25519_dalek::Signature::from_bytes(&s.signature))
            .collect();
        let batch_keys: Vec<VerifyingKey> = signed.iter().map(|(k, _)| keys[*k]).collect();
        ed25519_dalek::verify_batch(&refs, &signatures, &batch_keys).is_ok()
    }

    fn signing_keys(n: u8) -> Vec<SigningKey> {
        (1..=n).map(|i| SigningKey::from_bytes(&[i; 32])).collect()
    }

    #[test]
    fn honest_batches_hold_gathered_or_not_as_for_the_reference() {
        let keys = signing_keys(3);
        let vk = verifying(&keys);
        for per_key in [
            vec![1, 0, 0],
            vec![GATHER_MIN - 1, 0, 0],
            vec![GATHER_MIN, 0, 0],
            vec![64, 0, 0],
            vec![GATHER_MIN, 1, 3],
            vec![40, 20, GATHER_MIN - 1],
        ] {
            let signed = honest(&keys, &per_key);
            let items = items(&signed);
            assert!(equation(&items, &vk, Gather::Checked), "{per_key:?}");
            assert!(equation(&items, &vk, Gather::Never), "{per_key:?}");
            assert!(reference(&signed, &vk), "{per_key:?}");
        }
        assert!(equation(&[], &vk, Gather::Checked));
    }

    #[test]
    fn any_bad_signature_fails_the_batch_gathered_or_not() {
        let keys = signing_keys(2);
        let vk = verifying(&keys);
        let signed = honest(&keys, &[20, 5]);
        // Every way one signature of the batch can be wrong, at several positions.
        type Spoil = fn(&mut Signed);
        let spoils: [(&str, Spoil); 5] = [
            ("a message byte", |s| s.message[0] ^= 1),
            ("an R byte", |s| s.signature[3] ^= 1),
            ("an S byte", |s| s.signature[40] ^= 1),
            // S + L: the same scalar modulo L, but not canonical.
            ("S not canonical", |s| {
                // L = 2^252 + 27742317777372353535851937790883648493, little-endian.
                let mut l = [0u8; 32];
                l[..16].copy_from_slice(&[
                    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde,
                    0xf9, 0xde, 0x14,
                ]);
                l[31] = 0x10;
                let mut carry = 0u16;
                for (byte, l) in s.signature[32..].iter_mut().zip(l) {
                    let sum = u16::from(*byte) + u16::from(l) + carry;
                    *byte = sum as u8;
                    carry = sum >> 8;
                }
            }),
            // y = 2 is not the y of any curve point.
            ("R not a point", |s| {
                s.signature[..32].copy_from_slice(&[2; 32]);
                s.signature[31] = 0;
            }),
        ];
        for (what, spoil) in spoils {
            for position in [0, 7, signed.len() - 1] {
                let mut bad: Vec<(usize, Signed)> = signed
                    .iter()
                    .map(|(k, s)| {
                        (
                            *k,
                            Signed {
                                signature: s.signature,
                                message: s.message.clone(),
                            },
                        )
                    })
                    .collect();
                spoil(&mut bad[position].1);
                let items = items(&bad);
                assert!(
                    !equation(&items, &vk, Gather::Checked),
                    "{what} at {position}"
                );
                assert!(
                    !equation(&items, &vk, Gather::Never),
                    "{what} at {position}"
                );
                assert!(!reference(&bad, &vk), "{what} at {position}");
            }
        }
    }

    /// A key `[a]B + T` with `T` of order 2, and signatures by it that strict verification
    /// accepts (their `k` is even, so `[k]T` vanishes): nobody honest has such a key, but a
    /// member could make one.
    fn torsion_key_signatures(count: usize) -> (VerifyingKey, Vec<Signed>) {
        let a = Scalar::from_bytes_mod_order([9; 32]);
        // (0, −1): y = p − 1, the point of order 2.
        let mut minus_one = [0xff; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        let t = CompressedEdwardsY(minus_one).decompress().unwrap();
        assert!(!t.is_identity() && t.mul_by_cofactor().is_identity());
        let point = EdwardsPoint::mul_base(&a) + t;
        let key = VerifyingKey::from_bytes(&point.compress().to_bytes()).unwrap();
        assert!(!key.is_weak() && !point.is_torsion_free());
        let mut out = Vec::new();
        let mut n = 0u64;
        while out.len() < count {
            n += 1;
            let message = format!("torsion record {n}").into_bytes();
            let r = Scalar::from(n) * Scalar::from(0x1234_5678_9abc_u64);
            let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
            let mut h = Sha512::new();
            h.update(big_r);
            h.update(key.as_bytes());
            h.update(b"kim/record/v1");
            h.update(&message);
            let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
            if k.to_bytes()[0] & 1 == 1 {
                continue;
            }
            let s = r + k * a;
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&big_r);
            signature[32..].copy_from_slice(&s.to_bytes());
            let full = [b"kim/record/v1".as_slice(), &message].concat();
            key.verify_strict(&full, &ed25519_dalek::Signature::from_bytes(&signature))
                .unwrap();
            out.push(Signed { signature, message });
        }
        (key, out)
    }

    #[test]
    fn a_key_with_a_torsion_component_keeps_its_separate_terms() {
        let (key, all) = torsion_key_signatures(40);
        let vk = [key];
        let mut gathered_differs = 0;
        // Batches of GATHER_MIN..40 signatures: the equation with the check gives the verdict
        // of the separate terms every time; gathering without it does not.
        for len in GATHER_MIN..=all.len() {
            let signed: Vec<(usize, Signed)> = all[..len]
                .iter()
                .map(|s| {
                    (
                        0,
                        Signed {
                            signature: s.signature,
                            message: s.message.clone(),
                        },
                    )
                })
                .collect();
            let items = items(&signed);
            let separate = equation(&items, &vk, Gather::Never);
            assert_eq!(equation(&items, &vk, Gather::Checked), separate, "{len}");
            if equation(&items, &vk, Gather::Unchecked) != separate {
                gathered_differs += 1;
            }
        }
        assert!(
            gathered_differs > 0,
            "gathering a torsion key never changed the verdict: the test shows nothing"
        );
    }
}
