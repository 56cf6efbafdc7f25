//! `alces quota`, `alces snapshot`, `alces trash`, `alces du` and `alces fsck`:
//! the master's volume rpcs. Paths are local paths inside an Alces mount
//! (translated with /proc/self/mountinfo) or, with --fs-path, paths from the
//! filesystem root.

use std::path::Path;

use alces_proto::geometry::parse_size;
use alces_proto::pb;
use serde_json::json;

use crate::args::{
    Global, PathArgs, QuotaCommand, QuotaSetArgs, SnapshotArgs, TrashCommand, TrashTimeCommand,
};
use crate::connect::{admin, explain, Admin};
use crate::mountinfo;
use crate::status::human_bytes;

/// The filesystem path of `p` and, when it is inside a local mount, that mount's
/// master. A path that does not exist yet (a snapshot destination) is resolved
/// through its parent directory.
pub fn fs_path_of(p: &Path, fs_path: bool) -> anyhow::Result<(String, Option<String>)> {
    if fs_path {
        let s = p.to_string_lossy().into_owned();
        if !s.starts_with('/') {
            anyhow::bail!("--fs-path needs an absolute path from the filesystem root, got '{s}'");
        }
        return Ok((s, None));
    }
    let abs = match std::fs::canonicalize(p) {
        Ok(a) => a,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = p
                .file_name()
                .ok_or_else(|| anyhow::anyhow!("{} does not end with a name", p.display()))?;
            let parent = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::canonicalize(parent)
                .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", parent.display()))?
                .join(name)
        }
        Err(e) => anyhow::bail!("cannot resolve {}: {e}", p.display()),
    };
    let mounts = mountinfo::alces_mounts();
    let (m, fs) = mountinfo::translate(&mounts, &abs).ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not inside an Alces mount; pass --fs-path for a path from the filesystem root",
            abs.display()
        )
    })?;
    Ok((fs, Some(m.master)))
}

fn connect(global: &Global, p: &PathArgs) -> anyhow::Result<(Admin, String)> {
    let (path, master) = fs_path_of(&p.path, p.fs_path)?;
    Ok((admin(global, master.as_deref())?, path))
}

fn size_arg(flag: &str, v: &Option<String>) -> anyhow::Result<u64> {
    match v {
        None => Ok(0),
        Some(s) => parse_size(s).map_err(|e| {
            anyhow::anyhow!("--{flag} '{s}': {e} (give a non-negative size such as 10GiB)")
        }),
    }
}

fn count_arg(flag: &str, v: &Option<String>) -> anyhow::Result<u64> {
    match v {
        None => Ok(0),
        Some(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|e| anyhow::anyhow!("--{flag} '{s}': {e} (give a non-negative whole number)")),
    }
}

fn quota_json(q: &pb::QuotaInfo) -> serde_json::Value {
    json!({
        "path": q.path, "inode": q.inode,
        "soft_bytes": q.soft_bytes, "hard_bytes": q.hard_bytes,
        "soft_inodes": q.soft_inodes, "hard_inodes": q.hard_inodes,
        "grace_secs": q.grace_secs,
        "used_bytes": q.used_bytes, "used_inodes": q.used_inodes,
        "soft_exceeded_since_ns": q.soft_exceeded_since_ns,
    })
}

fn limit(v: u64, bytes: bool) -> String {
    match (v, bytes) {
        (0, _) => "-".into(),
        (v, true) => human_bytes(v),
        (v, false) => v.to_string(),
    }
}

fn print_quota(global: &Global, q: &pb::QuotaInfo) -> anyhow::Result<()> {
    if global.json {
        println!("{}", serde_json::to_string_pretty(&quota_json(q))?);
    } else {
        println!(
            "{}: bytes {} used, soft {}, hard {}; inodes {} used, soft {}, hard {}; grace {} s{}",
            q.path,
            human_bytes(q.used_bytes),
            limit(q.soft_bytes, true),
            limit(q.hard_bytes, true),
            q.used_inodes,
            limit(q.soft_inodes, false),
            limit(q.hard_inodes, false),
            q.grace_secs,
            if q.soft_exceeded_since_ns != 0 {
                " (soft limit exceeded)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

async fn quota_set(global: &Global, a: &QuotaSetArgs) -> anyhow::Result<()> {
    let req = pb::SetQuotaRequest {
        path: String::new(),
        hard_bytes: size_arg("bytes", &a.bytes)?,
        soft_bytes: size_arg("soft-bytes", &a.soft_bytes)?,
        hard_inodes: count_arg("inodes", &a.inodes)?,
        soft_inodes: count_arg("soft-inodes", &a.soft_inodes)?,
        grace_secs: a.grace,
    };
    let (mut ad, path) = connect(global, &a.path)?;
    let q = ad
        .client
        .set_quota(pb::SetQuotaRequest { path, ..req })
        .await
        .map_err(|s| explain(&ad.addr, "SetQuota", &s))?
        .into_inner();
    print_quota(global, &q)
}

/// `alces quota ...`.
pub async fn quota(global: &Global, cmd: &QuotaCommand) -> anyhow::Result<()> {
    match cmd {
        QuotaCommand::Set(a) => quota_set(global, a).await,
        QuotaCommand::Get(p) => {
            let (mut ad, path) = connect(global, p)?;
            let q = ad
                .client
                .get_quota(pb::PathRequest { path })
                .await
                .map_err(|s| explain(&ad.addr, "GetQuota", &s))?
                .into_inner();
            print_quota(global, &q)
        }
        QuotaCommand::Rm(p) => {
            let (mut ad, path) = connect(global, p)?;
            ad.client
                .remove_quota(pb::PathRequest { path: path.clone() })
                .await
                .map_err(|s| explain(&ad.addr, "RemoveQuota", &s))?;
            if !global.json {
                println!("{path}: quota removed");
            }
            Ok(())
        }
    }
}

/// `alces snapshot`.
pub async fn snapshot(global: &Global, a: &SnapshotArgs) -> anyhow::Result<()> {
    let (src, master) = fs_path_of(&a.source, a.fs_path)?;
    let (dst, _) = fs_path_of(&a.destination, a.fs_path)?;
    let mut ad = admin(global, master.as_deref())?;
    let started = std::time::Instant::now();
    let r = ad
        .client
        .snapshot(pb::SnapshotRequest {
            source: src.clone(),
            destination: dst.clone(),
        })
        .await
        .map_err(|s| explain(&ad.addr, "Snapshot", &s))?
        .into_inner();
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "source": src, "destination": dst, "inode": r.inode,
                "inodes": r.inodes, "bytes": r.bytes,
                "elapsed_ms": started.elapsed().as_millis() as u64,
            }))?
        );
    } else {
        println!(
            "{src} -> {dst}: {} inodes, {} shared copy-on-write",
            r.inodes,
            human_bytes(r.bytes)
        );
    }
    Ok(())
}

fn secs_of(ns: i64) -> i64 {
    ns / 1_000_000_000
}

/// `alces trash ...`.
pub async fn trash(global: &Global, cmd: &TrashCommand) -> anyhow::Result<()> {
    match cmd {
        TrashCommand::List => {
            let mut ad = admin(global, None)?;
            let l = ad
                .client
                .list_trash(pb::Empty {})
                .await
                .map_err(|s| explain(&ad.addr, "ListTrash", &s))?
                .into_inner();
            if global.json {
                let v: Vec<_> = l
                    .entries
                    .iter()
                    .map(|e| {
                        json!({"id": e.id, "path": e.path, "size": e.size,
                            "deleted_ns": e.deleted_ns, "expires_ns": e.expires_ns})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:>12} {:>10} {:>12}  PATH", "ID", "SIZE", "EXPIRES(s)");
                for e in &l.entries {
                    println!(
                        "{:>12} {:>10} {:>12}  {}",
                        e.id,
                        human_bytes(e.size),
                        secs_of(e.expires_ns),
                        e.path
                    );
                }
            }
            Ok(())
        }
        TrashCommand::Restore(a) => {
            let (id, path) = match a.what.parse::<u64>() {
                Ok(id) => (id, String::new()),
                Err(_) if a.what.starts_with('/') => (0, a.what.clone()),
                Err(_) => anyhow::bail!(
                    "'{}' is neither a trash id nor an absolute original path (see `alces trash list`)",
                    a.what
                ),
            };
            let (destination, master) = match &a.to {
                Some(p) => {
                    let (d, m) = fs_path_of(p, a.fs_path)?;
                    (d, m)
                }
                None => (String::new(), None),
            };
            let mut ad = admin(global, master.as_deref())?;
            let e = ad
                .client
                .restore_trash(pb::RestoreTrashRequest {
                    id,
                    path,
                    destination,
                })
                .await
                .map_err(|s| explain(&ad.addr, "RestoreTrash", &s))?
                .into_inner();
            if global.json {
                println!("{}", json!({"id": e.id, "path": e.path, "size": e.size}));
            } else {
                println!("restored trash id {} to {}", e.id, e.path);
            }
            Ok(())
        }
        TrashCommand::Purge(a) => {
            let mut ad = admin(global, None)?;
            let r = ad
                .client
                .purge_trash(pb::PurgeTrashRequest {
                    id: a.id.unwrap_or(0),
                })
                .await
                .map_err(|s| explain(&ad.addr, "PurgeTrash", &s))?
                .into_inner();
            if global.json {
                println!("{}", json!({"purged": r.purged, "bytes": r.bytes}));
            } else {
                println!("freed {} files, {}", r.purged, human_bytes(r.bytes));
            }
            Ok(())
        }
        TrashCommand::Time(TrashTimeCommand::Set(a)) => {
            let (mut ad, path) = connect(global, &a.path)?;
            let r = ad
                .client
                .set_trash_time(pb::SetTrashTimeRequest {
                    path,
                    seconds: a.seconds,
                })
                .await
                .map_err(|s| explain(&ad.addr, "SetTrashTime", &s))?
                .into_inner();
            if global.json {
                println!(
                    "{}",
                    json!({"path": r.path, "seconds": r.seconds, "explicit": r.explicit})
                );
            } else {
                println!("{}: trash time {} s", r.path, r.seconds);
            }
            Ok(())
        }
        TrashCommand::Time(TrashTimeCommand::Get(p)) => {
            let (mut ad, path) = connect(global, p)?;
            let r = ad
                .client
                .get_trash_time(pb::PathRequest { path })
                .await
                .map_err(|s| explain(&ad.addr, "GetTrashTime", &s))?
                .into_inner();
            if global.json {
                println!(
                    "{}",
                    json!({"path": r.path, "seconds": r.seconds, "explicit": r.explicit})
                );
            } else {
                println!(
                    "{}: trash time {} s ({})",
                    r.path,
                    r.seconds,
                    if r.explicit { "set here" } else { "inherited" }
                );
            }
            Ok(())
        }
    }
}

/// `alces du`.
pub async fn du(global: &Global, p: &PathArgs) -> anyhow::Result<()> {
    let (mut ad, path) = connect(global, p)?;
    let r = ad
        .client
        .disk_usage(pb::PathRequest { path })
        .await
        .map_err(|s| explain(&ad.addr, "DiskUsage", &s))?
        .into_inner();
    if global.json {
        println!(
            "{}",
            json!({"path": r.path, "bytes": r.bytes, "inodes": r.inodes})
        );
    } else {
        println!("{}\t{}\t{} inodes", human_bytes(r.bytes), r.path, r.inodes);
    }
    Ok(())
}

/// `alces fsck`.
pub async fn fsck(global: &Global) -> anyhow::Result<()> {
    let mut ad = admin(global, None)?;
    let r = ad
        .client
        .check_consistency(pb::Empty {})
        .await
        .map_err(|s| explain(&ad.addr, "CheckConsistency", &s))?
        .into_inner();
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ok": r.ok, "problems": r.problems, "chunks": r.chunks,
                "shared_chunks": r.shared_chunks, "trash_entries": r.trash_entries,
                "quotas": r.quotas, "chunks_on_servers": r.chunks_on_servers,
                "unknown_chunks_on_servers": r.unknown_chunks_on_servers,
                "namespace_bytes": r.namespace_bytes,
            }))?
        );
    } else {
        println!(
            "{} chunks ({} shared), {} trash entries, {} quotas, {} in the namespace; chunkservers hold {} chunks ({} not in the chunk table)",
            r.chunks,
            r.shared_chunks,
            r.trash_entries,
            r.quotas,
            human_bytes(r.namespace_bytes),
            r.chunks_on_servers,
            r.unknown_chunks_on_servers
        );
        for p in &r.problems {
            println!("PROBLEM: {p}");
        }
    }
    if !r.ok {
        anyhow::bail!("{} consistency problem(s) found", r.problems.len());
    }
    Ok(())
}
