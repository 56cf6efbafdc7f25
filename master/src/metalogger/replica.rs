//! The metalogger's local replica: the metadata applied so far, its own
//! changelog writer and data directory (the master's layout, so a master can
//! recover it after a promotion).

use std::path::{Path, PathBuf};

use prometheus_client::metrics::histogram::Histogram;

use crate::core::now_ns;
use crate::disk::changelog::{self, Writer};
use crate::disk::datadir::{self, DirLock};
use crate::disk::snapshot;
use crate::state::namespace::State;

/// The local replica: metadata, changelog writer and data directory.
pub(crate) struct Replica {
    pub(crate) dir: PathBuf,
    pub(crate) state: Option<State>,
    pub(crate) writer: Option<Writer>,
    pub(crate) seen_epoch: u64,
    pub(crate) since_snapshot: u64,
    pub(crate) snapshot_records: u64,
    pub(crate) _lock: Option<DirLock>,
}

fn hist() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5])
}

impl Replica {
    /// Opens the data directory: recovers local metadata if any (a corrupt tail
    /// is cut by the changelog reader and re-fetched from the master).
    pub(crate) fn open(dir: &Path, resync: bool, snapshot_records: u64) -> anyhow::Result<Self> {
        let lock = datadir::lock(dir)?;
        let seen_epoch = datadir::read_epoch(dir)?.unwrap_or(0);
        let mut r = Self {
            dir: dir.to_path_buf(),
            state: None,
            writer: None,
            seen_epoch,
            since_snapshot: 0,
            snapshot_records,
            _lock: Some(lock),
        };
        if resync {
            r.drop_local(true)?;
            return Ok(r);
        }
        let l = datadir::list(dir)?;
        if l.snapshots.is_empty() {
            if !l.changelogs.is_empty() {
                r.drop_local(true)?;
            }
            return Ok(r);
        }
        match datadir::recover(dir, 1 << 20, 1, now_ns()) {
            Ok(rec) => {
                tracing::info!(
                    version = rec.state.version,
                    epoch = rec.epoch,
                    "local metadata recovered"
                );
                r.start_writer(rec.state)?;
            }
            Err(e) => {
                tracing::warn!(error = %e, "local metadata unusable: fetching a fresh snapshot");
                r.drop_local(true)?;
            }
        }
        Ok(r)
    }

    pub(crate) fn start_writer(&mut self, state: State) -> anyhow::Result<()> {
        self.writer = None;
        self.writer = Some(Writer::start(
            &self.dir,
            state.version + 1,
            state.version,
            hist(),
        )?);
        self.state = Some(state);
        Ok(())
    }

    /// Forgets the local metadata; with `keep`, moves its files to
    /// `dropped.<time>/` instead of deleting them.
    pub(crate) fn drop_local(&mut self, keep: bool) -> anyhow::Result<()> {
        self.writer = None;
        self.state = None;
        self.since_snapshot = 0;
        let l = datadir::list(&self.dir)?;
        if l.snapshots.is_empty() && l.changelogs.is_empty() {
            return Ok(());
        }
        let aside = self.dir.join(format!("dropped.{}", now_ns()));
        if keep {
            std::fs::create_dir_all(&aside)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", aside.display()))?;
        }
        for (_, p) in l.snapshots.iter().chain(l.changelogs.iter()) {
            let res = match (keep, p.file_name()) {
                (true, Some(n)) => std::fs::rename(p, aside.join(n)),
                _ => std::fs::remove_file(p),
            };
            res.map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", p.display()))?;
        }
        changelog::sync_dir(&self.dir)?;
        tracing::warn!(kept_in = %aside.display(), moved = keep, "local metadata dropped");
        Ok(())
    }

    /// True when the data directory holds metadata (or a promotion's epoch).
    pub(crate) fn holds_metadata(&self) -> bool {
        self.state.is_some()
            || datadir::list(&self.dir)
                .map(|l| !l.snapshots.is_empty() || !l.changelogs.is_empty())
                .unwrap_or(true)
    }

    pub(crate) fn version(&self) -> Option<u64> {
        self.state.as_ref().map(|s| s.version)
    }

    /// Installs a snapshot fetched from the master as the new local history.
    pub(crate) fn install(&mut self, state: State, epoch: u64) -> anyhow::Result<()> {
        self.drop_local(false)?;
        snapshot::write(&self.dir, &state, now_ns())?;
        if epoch > self.seen_epoch || datadir::read_epoch(&self.dir)?.is_none() {
            datadir::write_epoch(&self.dir, epoch)?;
            self.seen_epoch = epoch;
        }
        self.start_writer(state)
    }

    /// Writes a local snapshot when enough records arrived since the last one.
    pub(crate) async fn maybe_snapshot(&mut self) -> anyhow::Result<()> {
        if self.since_snapshot < self.snapshot_records {
            return Ok(());
        }
        let Some(st) = self.state.clone() else {
            return Ok(());
        };
        if let Some(w) = &self.writer {
            w.rotate(st.version + 1).map_err(|e| anyhow::anyhow!(e))?;
        }
        self.since_snapshot = 0;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            snapshot::write(&dir, &st, now_ns())?;
            datadir::prune(&dir)
        })
        .await
        .map_err(|e| anyhow::anyhow!("snapshot task failed: {e}"))??;
        Ok(())
    }
}
