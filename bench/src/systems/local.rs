//! A plain directory on the local disk: the ceiling of the disk and page cache.

use std::path::PathBuf;

use anyhow::Result;

use super::{mkdirs, System};
use crate::cli::SystemKind;

/// A directory under the work directory.
pub struct Local {
    root: PathBuf,
}

impl Local {
    /// Uses (and creates) `root`.
    pub fn start(root: PathBuf) -> Result<Local> {
        mkdirs(&root)?;
        Ok(Local { root })
    }
}

impl System for Local {
    fn kind(&self) -> SystemKind {
        SystemKind::Local
    }

    fn version(&self) -> String {
        let fs = crate::exec::run(
            std::process::Command::new("stat")
                .args(["-f", "-c", "%T"])
                .arg(&self.root),
        )
        .unwrap_or_default();
        format!("local directory on {}", fs.trim())
    }

    fn make_dir(&mut self, rel: &str, _goal: u32) -> Result<PathBuf> {
        let p = self.root.join(rel);
        mkdirs(&p)?;
        Ok(p)
    }

    fn open_mounts(&mut self, n: usize) -> Result<Vec<PathBuf>> {
        Ok(vec![self.root.clone(); n])
    }

    fn close_mounts(&mut self) {}
}
