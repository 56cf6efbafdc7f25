//! The no-op FUSE filesystem mounted in this process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use super::{mkdirs, System};
use crate::cleanup::{self, Guard};
use crate::cli::SystemKind;
use crate::exec::{is_mounted, unmount, wait_for};
use crate::noopfs::NoopFs;

/// One mount of the shared no-op namespace.
struct NoopMount {
    session: Option<BackgroundSession>,
    guard: Option<Guard>,
}

impl NoopMount {
    fn mount(fs: &NoopFs, at: &Path) -> Result<NoopMount> {
        mkdirs(at)?;
        let mut cfg = Config::default();
        cfg.mount_options = vec![
            MountOption::FSName("alces-bench-noop".into()),
            MountOption::Subtype("noop".into()),
            MountOption::DefaultPermissions,
            MountOption::NoAtime,
        ];
        cfg.acl = SessionACL::Owner;
        cfg.n_threads = Some(4);
        let session = fuser::spawn_mount(fs.clone(), at, &cfg).with_context(|| {
            format!("cannot mount the no-op FUSE filesystem on {}", at.display())
        })?;
        let p = at.to_path_buf();
        let guard = Guard::new(format!("no-op FUSE mount {}", at.display()), move || {
            unmount(&p)
        });
        wait_for(
            &format!("no-op FUSE mount on {}", at.display()),
            Duration::from_secs(10),
            || is_mounted(at),
        )?;
        Ok(NoopMount {
            session: Some(session),
            guard: Some(guard),
        })
    }
}

impl Drop for NoopMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
        drop(self.guard.take());
    }
}

/// The no-op FUSE filesystem and its mounts.
pub struct Noop {
    fs: NoopFs,
    base: PathBuf,
    main: Option<NoopMount>,
    root: PathBuf,
    extra: Vec<NoopMount>,
}

impl Noop {
    /// Mounts a new no-op filesystem at `base/mnt`.
    pub fn start(base: PathBuf) -> Result<Noop> {
        let fs = NoopFs::new();
        let root = base.join("mnt");
        let main = NoopMount::mount(&fs, &root)?;
        Ok(Noop {
            fs,
            base,
            main: Some(main),
            root,
            extra: Vec::new(),
        })
    }
}

impl Drop for Noop {
    fn drop(&mut self) {
        self.close_mounts();
        drop(self.main.take());
    }
}

impl System for Noop {
    fn kind(&self) -> SystemKind {
        SystemKind::Noop
    }

    fn version(&self) -> String {
        "fuser 0.18 no-op filesystem (4 threads, 1 MiB max_write)".into()
    }

    fn make_dir(&mut self, rel: &str, _goal: u32) -> Result<PathBuf> {
        let p = self.root.join(rel);
        mkdirs(&p)?;
        Ok(p)
    }

    fn open_mounts(&mut self, n: usize) -> Result<Vec<PathBuf>> {
        let mut roots = Vec::new();
        for i in 0..n {
            let at = self.base.join(format!("mnt-extra{i}"));
            let mount = cleanup::starting("mounting the no-op filesystem", || {
                NoopMount::mount(&self.fs, &at)
            })?;
            self.extra.push(mount);
            roots.push(at);
        }
        Ok(roots)
    }

    fn close_mounts(&mut self) {
        self.extra.clear();
    }

    fn reads_zeros(&self) -> bool {
        true
    }
}
