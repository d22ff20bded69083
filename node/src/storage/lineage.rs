//! Which actor a node writes under after it starts: the same one only when its data is provably
//! the latest state that actor wrote, otherwise a fresh one (the rule is in `crate::version`'s
//! docs; this module applies it).
//!
//! The evidence is a *clean-stop record*: written (fsynced) as the last thing a node does when
//! it stops cleanly, and consumed (deleted, fsynced) as the first thing it does when it starts.
//! The record names the actor and a *marker file* in the data directory that the same stop
//! created, by device, inode, change time and a random token that is also the file's content. So:
//! - a crash or `kill -9` leaves no record (it was consumed at start): fresh actor, whatever
//!   the WAL kept (`sync_writes = false` may have lost the last writes);
//! - a copy of a running node's directory (a checkpoint, a live `cp`) has no record: fresh;
//! - a copy of a cleanly stopped node's directory, restored later (the case that defeats a
//!   plain clean-shutdown flag: the copy's record is a valid-looking one the original consumed
//!   long ago) holds a marker file with a different inode or change time (copying creates new
//!   files), or a different token (a sync tool replaces a changed file): fresh;
//! - only a directory that a clean stop left, started in place, keeps its actor, so version
//!   vectors grow by one actor per crash or restore, not per restart.
//!
//! What it cannot see: a block-level snapshot of a cleanly stopped node (inodes preserved)
//! rolled back in place. Whoever restores one must delete [`MARKER_FILE`] first (then the node
//! takes a fresh actor); the README says so.
//!
//! [`choose`] is the pure decision; [`Marker`] and the functions around it do the file I/O.

use std::io::Write as _;
use std::path::Path;

use crate::version::Actor;

/// The marker file a clean stop leaves in the data directory.
pub const MARKER_FILE: &str = "CLEAN_STOP";

/// Identity of the marker file: where it lives on disk and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub dev: u64,
    pub ino: u64,
    /// Change time (seconds, nanoseconds): no tool can set it, so a file restored where a
    /// deleted one was (and given its freed inode number) still differs.
    pub ctime: (i64, i64),
    pub token: [u8; 16],
}

/// What a clean stop records in the node's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanStop {
    /// The actor the node wrote under until it stopped.
    pub actor: Actor,
    /// The marker file that stop created; `None` for an engine without a directory (memory).
    pub marker: Option<Marker>,
}

/// What a node finds at start-up about its data directory's marker file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The engine has no directory (in-memory): only the record counts.
    NoDirectory,
    /// The directory holds this marker file, or none.
    Marker(Option<Marker>),
}

/// Why a node takes a fresh actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// A new data directory: no actor yet.
    NewDirectory,
    /// The last run did not stop cleanly (crash, kill -9, power loss, a copy of a running node):
    /// its last writes may have been lost, so its last dots may be issued again.
    UncleanStop,
    /// The clean-stop record does not match the directory: the data is a copy or a restore.
    CopiedOrRestored,
}

/// The decision: keep the stored actor, or take a fresh one (and why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Keep(Actor),
    Fresh(Fresh),
}

/// The rule (pure): keep the stored actor only when the last run stopped cleanly under it and
/// the marker file that stop created is the one found, in the same place.
pub fn choose(stored: Option<Actor>, record: Option<CleanStop>, found: Found) -> Choice {
    let Some(actor) = stored else { return Choice::Fresh(Fresh::NewDirectory) };
    let Some(record) = record else { return Choice::Fresh(Fresh::UncleanStop) };
    let same_place = match (found, record.marker) {
        (Found::NoDirectory, None) => true,
        (Found::Marker(Some(found)), Some(recorded)) => found == recorded,
        _ => false,
    };
    if record.actor == actor && same_place {
        Choice::Keep(actor)
    } else {
        Choice::Fresh(Fresh::CopiedOrRestored)
    }
}

impl CleanStop {
    /// `actor (8 bytes BE) ++ 0x00`, or `++ 0x01 dev ino ctime_s ctime_ns (8 bytes BE each)
    /// token (16 bytes)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.actor.to_be_bytes().to_vec();
        match &self.marker {
            None => out.push(0),
            Some(m) => {
                out.push(1);
                out.extend_from_slice(&m.dev.to_be_bytes());
                out.extend_from_slice(&m.ino.to_be_bytes());
                out.extend_from_slice(&m.ctime.0.to_be_bytes());
                out.extend_from_slice(&m.ctime.1.to_be_bytes());
                out.extend_from_slice(&m.token);
            }
        }
        out
    }

    /// The record, or `None` when the bytes are not one (treated as no record: fresh actor).
    pub fn decode(bytes: &[u8]) -> Option<CleanStop> {
        let actor = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let marker = match (bytes.get(8)?, bytes.len()) {
            (0, 9) => None,
            (1, 57) => Some(Marker {
                dev: u64::from_be_bytes(bytes[9..17].try_into().ok()?),
                ino: u64::from_be_bytes(bytes[17..25].try_into().ok()?),
                ctime: (
                    i64::from_be_bytes(bytes[25..33].try_into().ok()?),
                    i64::from_be_bytes(bytes[33..41].try_into().ok()?),
                ),
                token: bytes[41..57].try_into().ok()?,
            }),
            _ => return None,
        };
        Some(CleanStop { actor, marker })
    }
}

/// The marker file in `dir`, if there is a readable one.
pub fn read_marker(dir: &Path) -> std::io::Result<Option<Marker>> {
    let path = dir.join(MARKER_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Ok(token) = <[u8; 16]>::try_from(bytes.as_slice()) else { return Ok(None) };
    let meta = std::fs::metadata(&path)?;
    Ok(Some(Marker::of(&meta, token)))
}

/// Creates a new marker file in `dir` (a new inode: any old one is removed first) with a
/// random token, fsynced with its directory entry.
pub fn write_marker(dir: &Path) -> std::io::Result<Marker> {
    remove_marker(dir)?;
    let path = dir.join(MARKER_FILE);
    let token: [u8; 16] = rand::random();
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    file.write_all(&token)?;
    file.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Marker::of(&file.metadata()?, token))
}

impl Marker {
    fn of(meta: &std::fs::Metadata, token: [u8; 16]) -> Marker {
        use std::os::unix::fs::MetadataExt as _;
        Marker { dev: meta.dev(), ino: meta.ino(), ctime: (meta.ctime(), meta.ctime_nsec()), token }
    }
}

/// Removes the marker file (fine when there is none), fsyncing the directory.
pub fn remove_marker(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(MARKER_FILE)) {
        Ok(()) => std::fs::File::open(dir)?.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Marker = Marker { dev: 1, ino: 2, ctime: (5, 6), token: [3; 16] };

    #[test]
    fn only_a_clean_stop_found_in_place_keeps_the_actor() {
        let clean = CleanStop { actor: 7, marker: Some(M) };
        assert_eq!(choose(None, None, Found::Marker(None)), Choice::Fresh(Fresh::NewDirectory));
        assert_eq!(choose(Some(7), Some(clean), Found::Marker(Some(M))), Choice::Keep(7));
        assert_eq!(
            choose(Some(7), None, Found::Marker(Some(M))),
            Choice::Fresh(Fresh::UncleanStop)
        );
        let restored = [
            // A copy: new inode, same token.
            Found::Marker(Some(Marker { ino: 9, ..M })),
            // A restore that got the deleted original's inode number back.
            Found::Marker(Some(Marker { ctime: (5, 7), ..M })),
            // Another file system.
            Found::Marker(Some(Marker { dev: 9, ..M })),
            // Synced from a copy: another token.
            Found::Marker(Some(Marker { token: [4; 16], ..M })),
            // The file is gone (deleted by whoever restored a snapshot).
            Found::Marker(None),
            Found::NoDirectory,
        ];
        for found in restored {
            assert_eq!(
                choose(Some(7), Some(clean), found),
                Choice::Fresh(Fresh::CopiedOrRestored),
                "{found:?}"
            );
        }
        // A record for another actor is not this directory's.
        let other = CleanStop { actor: 8, ..clean };
        assert_eq!(
            choose(Some(7), Some(other), Found::Marker(Some(M))),
            Choice::Fresh(Fresh::CopiedOrRestored)
        );
        // Without a directory, the record alone counts.
        let memory = CleanStop { actor: 7, marker: None };
        assert_eq!(choose(Some(7), Some(memory), Found::NoDirectory), Choice::Keep(7));
        assert_eq!(
            choose(Some(7), Some(memory), Found::Marker(Some(M))),
            Choice::Fresh(Fresh::CopiedOrRestored)
        );
    }

    #[test]
    fn records_round_trip_and_garbage_is_no_record() {
        for r in [CleanStop { actor: 7, marker: Some(M) }, CleanStop { actor: 1, marker: None }] {
            assert_eq!(CleanStop::decode(&r.encode()), Some(r));
        }
        assert_eq!(CleanStop::decode(b""), None);
        assert_eq!(CleanStop::decode(&[0; 10]), None);
        let mut long = CleanStop { actor: 7, marker: Some(M) }.encode();
        long.push(0);
        assert_eq!(CleanStop::decode(&long), None);
    }

    #[test]
    fn a_copied_marker_file_is_not_the_original() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_marker(dir.path()).unwrap(), None);
        let written = write_marker(dir.path()).unwrap();
        assert_eq!(read_marker(dir.path()).unwrap(), Some(written));
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join(MARKER_FILE), copy.path().join(MARKER_FILE)).unwrap();
        let copied = read_marker(copy.path()).unwrap().unwrap();
        assert_eq!(copied.token, written.token);
        assert_ne!(copied, written, "a copy has its own inode");
        // A new marker replaces the old one with another token.
        let again = write_marker(dir.path()).unwrap();
        assert_ne!(again.token, written.token);
        remove_marker(dir.path()).unwrap();
        remove_marker(dir.path()).unwrap();
        assert_eq!(read_marker(dir.path()).unwrap(), None);
    }
}
