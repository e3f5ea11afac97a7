//! Golden wire bytes of event contracts: a guard against changing an event type in a way that
//! the processes still running the previous build would misread.
//!
//! For each event type, a directory keeps the payload bytes of a sample of every version of its
//! contract that was ever published, one file per version and codec:
//! `<dir>/<tag>/v<version>.<codec>.hex` (hexadecimal text, so that a change shows in review).
//! [`Golden::check`] asks two things:
//!
//! 1. the sample of the current version still encodes to the bytes kept for that version: a
//!    field added, removed, reordered or retyped under the same version fails here, and says to
//!    bump the version (declaring `upgrades_from`) or to undo the change;
//! 2. every kept version, older ones included, still decodes as the current type (through its
//!    declared upgrades): a reader of the new build reads what the old builds still send.
//!
//! The first run of a new version writes its file, to be committed with the change; under CI
//! (the `CI` environment variable set) a missing file fails instead, so that a forgotten file is
//! not written where nobody commits it. `INTERROLE_BLESS=1` rewrites the current version's file
//! (for a change that is meant, before any process ran the old bytes).
//!
//! ```no_run
//! use interrole::testing::golden::Golden;
//!
//! #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! struct OrderPlaced { id: u64, total_cents: u64 }
//! interrole::impl_event!(OrderPlaced = "shop.order-placed");
//!
//! #[test]
//! fn contracts_do_not_break() {
//!     let golden = Golden::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden"));
//!     golden.check(&OrderPlaced { id: 7, total_cents: 1999 }).unwrap();
//! }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use interrole_core::codec;
use interrole_core::{Codec, Event};

/// A directory of golden payloads (see the [module](self) docs).
#[derive(Debug, Clone)]
pub struct Golden {
    dir: PathBuf,
}

/// What [`Golden::check`] found wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GoldenError {
    /// The current version's sample no longer encodes to its kept bytes.
    #[error(
        "{tag} version {version} ({codec}) now encodes differently than {path}: a process of the previous build would misread it; bump the version and declare upgrades_from, or undo the change (INTERROLE_BLESS=1 rewrites the file if no process ever sent the old bytes)\n  kept: {kept}\n   now: {now}"
    )]
    Changed {
        /// The type tag.
        tag: String,
        /// The contract version.
        version: u32,
        /// The codec.
        codec: Codec,
        /// The kept file.
        path: PathBuf,
        /// The kept bytes, in hexadecimal.
        kept: String,
        /// The bytes now, in hexadecimal.
        now: String,
    },
    /// A kept version no longer decodes as the current type.
    #[error("{path} ({tag} version {version}) no longer decodes as version {current}: {reason}")]
    Unreadable {
        /// The type tag.
        tag: String,
        /// The kept version.
        version: u32,
        /// The current version.
        current: u32,
        /// The kept file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The kept version decodes, but not to the sample.
    #[error("{path} decodes to {decoded}, not to the sample {sample}")]
    Different {
        /// The kept file.
        path: PathBuf,
        /// What it decodes to.
        decoded: String,
        /// The sample.
        sample: String,
    },
    /// Under CI, the current version has no file yet.
    #[error("{path} is missing: run the test without CI set to write it, and commit it")]
    Missing {
        /// The file that would be written.
        path: PathBuf,
    },
    /// A file could not be read or written, or is not hexadecimal.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The sample did not encode.
    #[error("the sample does not encode: {0}")]
    Encode(String),
}

/// What [`Golden::check`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GoldenReport {
    /// The versions whose kept bytes were decoded (the current one included).
    pub versions: Vec<u32>,
    /// The file written for the current version, when it was missing (commit it).
    pub written: Option<PathBuf>,
}

impl Golden {
    /// The golden payloads kept under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Checks `sample`, a value of the current version of its contract, against the kept
    /// payloads of its tag (see the [module](self) docs).
    ///
    /// # Errors
    /// [`GoldenError`], saying what changed and what to do about it.
    pub fn check<E: Event + PartialEq + fmt::Debug>(
        &self,
        sample: &E,
    ) -> Result<GoldenReport, GoldenError> {
        let dir = self.dir.join(E::TYPE_TAG);
        let now = payload(sample)?;
        let current = dir.join(file_name(E::VERSION, E::CODEC));
        let mut report = GoldenReport::default();
        match std::fs::read_to_string(&current) {
            Ok(text) => {
                let kept = from_hex(&text).map_err(|reason| io(&current, reason))?;
                let bless = std::env::var_os("INTERROLE_BLESS").is_some_and(|v| v == "1");
                if kept != now && bless {
                    write(&current, &now)?;
                } else if kept != now {
                    return Err(GoldenError::Changed {
                        tag: E::TYPE_TAG.to_owned(),
                        version: E::VERSION,
                        codec: E::CODEC,
                        path: current,
                        kept: to_hex(&kept),
                        now: to_hex(&now),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::env::var_os("CI").is_some() {
                    return Err(GoldenError::Missing { path: current });
                }
                std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e.to_string()))?;
                write(&current, &now)?;
                report.written = Some(current.clone());
            }
            Err(e) => return Err(io(&current, e.to_string())),
        }
        // Every kept version, the current one included, decodes as `E`.
        let mut kept = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e.to_string()))? {
            let path = entry.map_err(|e| io(&dir, e.to_string()))?.path();
            if let Some((version, codec)) = parse_file_name(&path) {
                kept.push((version, codec, path));
            }
        }
        kept.sort_by_key(|(version, codec, _)| (*version, codec.wire_id()));
        for (version, codec, path) in kept {
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e.to_string()))?;
            let bytes = from_hex(&text).map_err(|reason| io(&path, reason))?;
            let decoded =
                E::decode_payload(version, codec, &bytes).map_err(|e| GoldenError::Unreadable {
                    tag: E::TYPE_TAG.to_owned(),
                    version,
                    current: E::VERSION,
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if version == E::VERSION && codec == E::CODEC && decoded != *sample {
                return Err(GoldenError::Different {
                    path,
                    decoded: format!("{decoded:?}"),
                    sample: format!("{sample:?}"),
                });
            }
            report.versions.push(version);
        }
        Ok(report)
    }
}

/// The payload bytes of `sample`, as its type's codec writes them in an envelope.
fn payload<E: Event>(sample: &E) -> Result<Vec<u8>, GoldenError> {
    let mut out = Vec::new();
    codec::encode_with(E::CODEC, sample, &mut out).map_err(|e| GoldenError::Encode(e.to_string()))?;
    Ok(out)
}

fn file_name(version: u32, codec: Codec) -> String {
    format!("v{version}.{}.hex", codec.name())
}

fn parse_file_name(path: &Path) -> Option<(u32, Codec)> {
    let name = path.file_name()?.to_str()?.strip_suffix(".hex")?;
    let (version, codec) = name.strip_prefix('v')?.split_once('.')?;
    let codec = [Codec::Bincode, Codec::Json, Codec::MessagePack]
        .into_iter()
        .find(|c| c.name() == codec)?;
    Some((version.parse().ok()?, codec))
}

fn io(path: &Path, reason: String) -> GoldenError {
    GoldenError::Io {
        path: path.to_owned(),
        reason,
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), GoldenError> {
    std::fs::write(path, to_hex(bytes) + "\n").map_err(|e| io(path, e.to_string()))
}

/// Bytes as hexadecimal pairs, 32 to a line.
fn to_hex(bytes: &[u8]) -> String {
    bytes
        .chunks(32)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    text.split_whitespace()
        .map(|pair| {
            u8::from_str_radix(pair, 16).map_err(|_| format!("{pair:?} is not a hexadecimal byte"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct V1 {
        a: u32,
    }
    interrole_core::impl_event!(V1 = "golden.test");

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct V1Changed {
        a: u32,
        b: u32,
    }
    interrole_core::impl_event!(V1Changed = "golden.test");

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct V2 {
        a: u64,
        b: u32,
    }
    interrole_core::impl_event!(V2 = "golden.test", version = 2, upgrades_from = V1);
    impl From<V1> for V2 {
        fn from(v1: V1) -> Self {
            Self {
                a: u64::from(v1.a),
                b: 0,
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct V2NoUpgrade {
        a: u64,
    }
    interrole_core::impl_event!(V2NoUpgrade = "golden.test", version = 2);

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("interrole-golden-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_change_without_a_new_version_fails_and_an_upgrade_passes() {
        // Not under CI's rule for missing files: this test writes its own.
        if std::env::var_os("CI").is_some() {
            let dir = temp_dir("ci");
            assert!(matches!(
                Golden::new(&dir).check(&V1 { a: 1 }),
                Err(GoldenError::Missing { .. })
            ));
            return;
        }
        let dir = temp_dir("change");
        let golden = Golden::new(&dir);
        let first = golden.check(&V1 { a: 300 }).unwrap();
        assert!(first.written.is_some());
        assert_eq!(golden.check(&V1 { a: 300 }).unwrap().versions, [1]);
        // Another value of the same shape: the kept one is the contract's sample.
        assert!(matches!(
            golden.check(&V1 { a: 7 }),
            Err(GoldenError::Changed { .. })
        ));
        // A field added under the same version: refused.
        let err = golden.check(&V1Changed { a: 300, b: 1 }).unwrap_err();
        assert!(matches!(err, GoldenError::Changed { version: 1, .. }), "{err}");
        // The same change as version 2 with an upgrade: version 1's bytes still read.
        let report = golden.check(&V2 { a: 300, b: 1 }).unwrap();
        assert_eq!(report.versions, [1, 2]);
        // Version 2 without the upgrade: version 1 no longer reads.
        let err = golden.check(&V2NoUpgrade { a: 300 }).unwrap_err();
        assert!(matches!(err, GoldenError::Changed { .. } | GoldenError::Unreadable { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_names_and_hex_round_trip() {
        let name = file_name(3, Codec::MessagePack);
        assert_eq!(name, "v3.msgpack.hex");
        assert_eq!(
            parse_file_name(Path::new(&name)),
            Some((3, Codec::MessagePack))
        );
        assert_eq!(parse_file_name(Path::new("notes.txt")), None);
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
        assert!(from_hex("0g").is_err());
    }
}
