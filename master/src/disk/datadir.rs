//! The master's data directory:
//!
//! ```text
//! <data-dir>/lock                          exclusive flock held while a master runs
//! <data-dir>/epoch                         master epoch (decimal, 1 for a new filesystem)
//! <data-dir>/snapshot.<V:020>.alces        metadata snapshot at version V (newest 2 kept)
//! <data-dir>/changelog.<F:020>.log         changelog records from version F on
//! ```
//!
//! Startup loads the newest valid snapshot (falling back to the previous one),
//! then replays every later changelog record.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::disk::changelog::{self, sync_dir};
use crate::disk::snapshot;
use crate::state::namespace::State;
use crate::state::ops::apply;

/// Snapshots kept in the data directory.
pub const KEEP_SNAPSHOTS: usize = 2;

/// The exclusive lock on a data directory; released when dropped.
pub struct DirLock {
    _file: File,
}

/// Takes the lock file so two masters cannot use one data directory.
pub fn lock(dir: &Path) -> anyhow::Result<DirLock> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open lock file {}: {e}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        anyhow::bail!(
            "data directory {} is in use by another master (lock file {} is held); stop that master first",
            dir.display(),
            path.display()
        );
    }
    Ok(DirLock { _file: file })
}

/// Reads `<dir>/epoch`.
pub fn read_epoch(dir: &Path) -> anyhow::Result<Option<u64>> {
    let path = dir.join("epoch");
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| {
            anyhow::anyhow!(
                "epoch file {} does not hold a number ('{}'); restore it from a backup",
                path.display(),
                s.trim()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => anyhow::bail!("cannot read epoch file {}: {e}", path.display()),
    }
}

/// Writes `<dir>/epoch` durably.
pub fn write_epoch(dir: &Path, epoch: u64) -> anyhow::Result<()> {
    let path = dir.join("epoch");
    let tmp = dir.join("epoch.tmp");
    std::fs::write(&tmp, format!("{epoch}\n"))
        .and_then(|_| File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| anyhow::anyhow!("cannot write epoch file {}: {e}", path.display()))?;
    sync_dir(dir)
}

/// Snapshots and changelogs found in a data directory, oldest first.
#[derive(Debug, Default)]
pub struct Listing {
    /// (version, path) of each snapshot.
    pub snapshots: Vec<(u64, PathBuf)>,
    /// (first version, path) of each changelog.
    pub changelogs: Vec<(u64, PathBuf)>,
}

/// Lists the snapshots and changelogs in `dir`; removes leftover temporary files.
pub fn list(dir: &Path) -> anyhow::Result<Listing> {
    let mut l = Listing::default();
    let rd = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot list data directory {}: {e}", dir.display()))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(v) = snapshot::parse_name(&name) {
            l.snapshots.push((v, e.path()));
        } else if let Some(v) = changelog::parse_name(&name) {
            l.changelogs.push((v, e.path()));
        } else if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    l.snapshots.sort();
    l.changelogs.sort();
    Ok(l)
}

/// What startup found and loaded.
pub struct Recovered {
    /// The metadata after replay.
    pub state: State,
    /// The epoch.
    pub epoch: u64,
    /// Version of the snapshot loaded.
    pub snapshot_version: u64,
    /// True when a new filesystem was created.
    pub formatted: bool,
}

/// Loads (or, for an empty directory, creates) the filesystem in `dir`.
pub fn recover(
    dir: &Path,
    chunk_size: u64,
    default_goal: u32,
    now_ns: i64,
) -> anyhow::Result<Recovered> {
    let l = list(dir)?;
    if l.snapshots.is_empty() && l.changelogs.is_empty() {
        let epoch = read_epoch(dir)?;
        let cluster_id = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let state = State::format(cluster_id, chunk_size, default_goal, now_ns);
        snapshot::write(dir, &state, now_ns)?;
        let epoch = match epoch {
            Some(e) => e,
            None => {
                write_epoch(dir, 1)?;
                1
            }
        };
        tracing::info!(dir = %dir.display(), cluster_id = %state.cluster_id, "formatted a new filesystem");
        return Ok(Recovered {
            state,
            epoch,
            snapshot_version: 0,
            formatted: true,
        });
    }
    if l.snapshots.is_empty() {
        anyhow::bail!(
            "data directory {} holds changelogs but no snapshot: refusing to start (it would lose metadata); restore a snapshot file (snapshot.*.alces) from a backup or a metalogger",
            dir.display()
        );
    }
    let epoch = read_epoch(dir)?.ok_or_else(|| {
        anyhow::anyhow!(
            "data directory {} holds metadata but no epoch file; write the last epoch into {}/epoch",
            dir.display(),
            dir.display()
        )
    })?;
    let mut state = None;
    for (v, path) in l.snapshots.iter().rev() {
        match snapshot::read(path) {
            Ok(s) => {
                tracing::info!(snapshot = %path.display(), version = v, "loaded snapshot");
                state = Some(s);
                break;
            }
            Err(e) => tracing::error!(
                error = %e,
                "SNAPSHOT IS CORRUPT, falling back to the previous snapshot"
            ),
        }
    }
    let mut state = state.ok_or_else(|| {
        anyhow::anyhow!(
            "no snapshot in {} is readable: refusing to start; restore a snapshot from a backup or a metalogger",
            dir.display()
        )
    })?;
    let snapshot_version = state.version;
    let mut replayed = 0u64;
    for (idx, (_, path)) in l.changelogs.iter().enumerate() {
        // Skip files whose records all precede the snapshot.
        if let Some((next_first, _)) = l.changelogs.get(idx + 1) {
            if *next_first <= state.version + 1 {
                continue;
            }
        }
        let recs = changelog::read_file(path)?;
        for r in recs {
            if r.version <= state.version {
                continue;
            }
            if r.version != state.version + 1 {
                anyhow::bail!(
                    "changelog {} continues at version {} but the metadata is at version {}: records are missing; refusing to start",
                    path.display(),
                    r.version,
                    state.version
                );
            }
            apply(&mut state, &r).map_err(|e| {
                anyhow::anyhow!(
                    "changelog {} record version {} cannot be applied: {e}; refusing to start",
                    path.display(),
                    r.version
                )
            })?;
            replayed += 1;
        }
    }
    tracing::info!(version = state.version, replayed, "changelog replayed");
    if chunk_size != state.chunk_size {
        tracing::warn!(
            configured = chunk_size,
            filesystem = state.chunk_size,
            "--chunk-size differs from the chunk size this filesystem was created with; using the filesystem's"
        );
    }
    Ok(Recovered {
        state,
        epoch,
        snapshot_version,
        formatted: false,
    })
}

/// Keeps the newest [`KEEP_SNAPSHOTS`] snapshots and the changelogs needed after
/// the oldest one kept.
pub fn prune(dir: &Path) -> anyhow::Result<()> {
    let l = list(dir)?;
    if l.snapshots.len() < KEEP_SNAPSHOTS {
        return Ok(());
    }
    let cut = l.snapshots.len() - KEEP_SNAPSHOTS;
    for (_, p) in &l.snapshots[..cut] {
        std::fs::remove_file(p)
            .map_err(|e| anyhow::anyhow!("cannot remove old snapshot {}: {e}", p.display()))?;
    }
    let oldest_kept = l.snapshots[cut].0;
    for (i, (_, p)) in l.changelogs.iter().enumerate() {
        if let Some((next_first, _)) = l.changelogs.get(i + 1) {
            if *next_first <= oldest_kept + 1 {
                std::fs::remove_file(p).map_err(|e| {
                    anyhow::anyhow!("cannot remove old changelog {}: {e}", p.display())
                })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::changelog::Writer;
    use crate::state::namespace::ROOT_INODE;
    use crate::state::ops::{prepare_create, NewInode, Owner};
    use alces_proto::pb::{ChangelogRecord, FileType};
    use prometheus_client::metrics::histogram::Histogram;

    fn hist() -> Histogram {
        Histogram::new([0.001, 0.01])
    }

    fn mkdir_record(st: &State, name: &str) -> ChangelogRecord {
        let op = prepare_create(
            st,
            &NewInode {
                parent: ROOT_INODE,
                name: name.as_bytes(),
                kind: FileType::Directory,
                mode: 0o755,
                umask: 0,
                rdev: 0,
                owner: Owner::default(),
                target: b"",
            },
        )
        .unwrap();
        ChangelogRecord {
            reply: None,
            version: st.version + 1,
            time_ns: 5000 + st.version as i64,
            op: Some(op),
        }
    }

    fn add(st: &mut State, w: &Writer, n: usize, prefix: &str) {
        for i in 0..n {
            let mut rec = mkdir_record(st, &format!("{prefix}{i}"));
            // Tagged requests of two sessions, each acknowledging all but
            // its previous request: the reply cache goes through snapshots
            // and replay with the records.
            let v = rec.version;
            rec.reply = Some(alces_proto::pb::ReplyRecord {
                session_id: 7 + v % 2,
                request_id: v,
                acked_below: v.saturating_sub(2),
                outcome: Some(alces_proto::pb::reply_record::Outcome::Empty(
                    alces_proto::pb::Empty {},
                )),
            });
            apply(st, &rec).unwrap();
            w.append(&rec).unwrap();
        }
    }

    #[test]
    fn changelog_round_trip_and_torn_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut st = State::format("c".into(), 1 << 20, 1, 0);
        let mut w = Writer::start(dir, 1, 0, hist()).unwrap();
        let mut recs = Vec::new();
        for i in 0..5 {
            let rec = mkdir_record(&st, &format!("d{i}"));
            apply(&mut st, &rec).unwrap();
            w.append(&rec).unwrap();
            recs.push(rec);
        }
        w.stop();
        let path = dir.join(changelog::file_name(1));
        assert_eq!(changelog::read_file(&path).unwrap(), recs);

        // Cut in the middle of the last record.
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);
        assert_eq!(changelog::read_file(&path).unwrap(), recs[..4]);
        let cut_len = std::fs::metadata(&path).unwrap().len();
        let sizes: Vec<u64> = recs
            .iter()
            .map(|r| (prost::Message::encoded_len(r) + 8) as u64)
            .collect();
        assert_eq!(cut_len, sizes[..4].iter().sum::<u64>());

        // Flip a byte inside the third record: everything from it on is cut.
        let mut data = std::fs::read(&path).unwrap();
        let at = (sizes[0] + sizes[1] + 10) as usize;
        data[at] ^= 0x55;
        std::fs::write(&path, &data).unwrap();
        assert_eq!(changelog::read_file(&path).unwrap(), recs[..2]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), sizes[0] + sizes[1]);
    }

    /// Builds a history: format, 4 records, snapshot, 3 records, snapshot,
    /// 2 records (changelog rotated at each snapshot). Returns the live state.
    fn history(dir: &Path) -> State {
        let r = recover(dir, 1 << 20, 2, 100).unwrap();
        assert!(r.formatted);
        assert_eq!(read_epoch(dir).unwrap(), Some(1));
        let mut st = r.state;
        let mut w = Writer::start(dir, 1, 0, hist()).unwrap();
        add(&mut st, &w, 4, "a");
        snapshot::write(dir, &st, 1).unwrap();
        w.rotate(st.version + 1).unwrap();
        add(&mut st, &w, 3, "b");
        snapshot::write(dir, &st, 2).unwrap();
        w.rotate(st.version + 1).unwrap();
        add(&mut st, &w, 2, "c");
        w.stop();
        prune(dir).unwrap();
        st
    }

    #[test]
    fn recovery_replays_and_prunes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let live = history(dir);
        let l = list(dir).unwrap();
        assert_eq!(
            l.snapshots.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![4, 7]
        );
        assert_eq!(
            l.changelogs.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![5, 8]
        );
        let r = recover(dir, 1 << 20, 2, 0).unwrap();
        assert!(!r.formatted);
        assert_eq!(r.snapshot_version, 7);
        assert_eq!(r.state, live);
        // Each session keeps its last two requests (the older are acknowledged).
        assert_eq!(live.replies.len(), 4);
        assert!(live.replies.get(8, 9).is_some() && live.replies.get(8, 7).is_some());
        assert!(live.replies.get(8, 5).is_none());
    }

    #[test]
    fn corrupt_newest_snapshot_falls_back_to_the_previous() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let live = history(dir);
        let newest = dir.join(snapshot::file_name(7));
        let mut data = std::fs::read(&newest).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        std::fs::write(&newest, &data).unwrap();
        let r = recover(dir, 1 << 20, 2, 0).unwrap();
        assert_eq!(r.snapshot_version, 4);
        assert_eq!(r.state, live);

        // A torn tail on the last changelog loses only the torn record.
        let last = dir.join(changelog::file_name(8));
        let len = std::fs::metadata(&last).unwrap().len();
        let f = OpenOptions::new().write(true).open(&last).unwrap();
        f.set_len(len - 1).unwrap();
        drop(f);
        let r = recover(dir, 1 << 20, 2, 0).unwrap();
        assert_eq!(r.state.version, live.version - 1);
        assert!(r.state.lookup(ROOT_INODE, b"c0").is_ok());
        assert!(r.state.lookup(ROOT_INODE, b"c1").is_err());

        // No readable snapshot at all: refuse.
        std::fs::write(dir.join(snapshot::file_name(4)), b"garbage").unwrap();
        let e = recover(dir, 1 << 20, 2, 0).err().unwrap().to_string();
        assert!(e.contains("no snapshot"), "{e}");
    }

    #[test]
    fn changelogs_without_snapshot_refuse_to_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        history(dir);
        for (_, p) in list(dir).unwrap().snapshots {
            std::fs::remove_file(p).unwrap();
        }
        let e = recover(dir, 1 << 20, 2, 0).err().unwrap().to_string();
        assert!(e.contains("holds changelogs but no snapshot"), "{e}");
        // Nothing was reformatted.
        assert!(list(dir).unwrap().snapshots.is_empty());
    }

    #[test]
    fn a_gap_in_the_changelog_refuses_to_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        history(dir);
        // Losing the middle changelog leaves records 5..7 missing after snapshot 4,
        // which matters once snapshot 7 is unreadable.
        std::fs::write(dir.join(snapshot::file_name(7)), b"bad").unwrap();
        std::fs::remove_file(dir.join(changelog::file_name(5))).unwrap();
        let e = recover(dir, 1 << 20, 2, 0).err().unwrap().to_string();
        assert!(e.contains("records are missing"), "{e}");
    }

    #[test]
    fn one_master_per_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let l = lock(tmp.path()).unwrap();
        let e = lock(tmp.path()).err().unwrap().to_string();
        assert!(e.contains("in use by another master"), "{e}");
        drop(l);
        lock(tmp.path()).unwrap();
    }

    #[test]
    fn epoch_file() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_epoch(tmp.path()).unwrap(), None);
        write_epoch(tmp.path(), 7).unwrap();
        assert_eq!(read_epoch(tmp.path()).unwrap(), Some(7));
        std::fs::write(tmp.path().join("epoch"), "x").unwrap();
        assert!(read_epoch(tmp.path())
            .unwrap_err()
            .to_string()
            .contains("does not hold a number"));
    }
}
