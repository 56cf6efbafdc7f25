//! `alces fileinfo`: a file's chunks and where their copies live.

use alces_proto::pb::{FileInfoReply, FileInfoRequest};
use serde_json::json;

use crate::args::{FileinfoArgs, Global};
use crate::connect::{admin, explain};
use crate::mountinfo;

/// Works out the filesystem path and, when PATH is in a local mount, that mount's
/// master address.
pub fn resolve(args: &FileinfoArgs) -> anyhow::Result<(String, Option<String>)> {
    if args.fs_path {
        let p = args.path.to_string_lossy().into_owned();
        if !p.starts_with('/') {
            anyhow::bail!("--fs-path needs an absolute path from the filesystem root, got '{p}'");
        }
        return Ok((p, None));
    }
    let abs = std::fs::canonicalize(&args.path)
        .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", args.path.display()))?;
    let mounts = mountinfo::alces_mounts();
    let (m, fs) = mountinfo::translate(&mounts, &abs).ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not inside an Alces mount (none of the fuse.alces mounts in /proc/self/mountinfo holds it); pass --fs-path for a path from the filesystem root",
            abs.display()
        )
    })?;
    Ok((fs, Some(m.master)))
}

/// The reply as JSON.
pub fn to_json(r: &FileInfoReply) -> serde_json::Value {
    let a = r.attr.unwrap_or_default();
    json!({
        "path": r.path,
        "inode": a.inode,
        "size": a.size,
        "goal": a.goal,
        "chunks": r.chunks.iter().map(|c| json!({
            "index": c.index,
            "id": c.chunk_id,
            "version": c.version,
            "goal": c.goal,
            "copies": c.copies.iter().map(|l| json!({
                "server_id": l.server_id,
                "address": l.address,
                "label": l.label,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The reply as text.
pub fn to_text(r: &FileInfoReply) -> String {
    let a = r.attr.unwrap_or_default();
    let mut out = format!(
        "{}: inode {}, size {}, goal {}, {} chunks\n",
        r.path,
        a.inode,
        a.size,
        a.goal,
        r.chunks.len()
    );
    for c in &r.chunks {
        out += &format!(
            "  chunk {}: id {:016x} version {} ({} of goal {} copies)\n",
            c.index,
            c.chunk_id,
            c.version,
            c.copies.len(),
            c.goal
        );
        for l in &c.copies {
            out += &format!("    copy on {} ({}) {}\n", l.server_id, l.address, l.label);
        }
    }
    out
}

/// `alces fileinfo`.
pub async fn run(global: &Global, args: &FileinfoArgs) -> anyhow::Result<()> {
    let (path, mount_master) = resolve(args)?;
    let mut a = admin(global, mount_master.as_deref())?;
    let r = a
        .client
        .file_info(FileInfoRequest { path: path.clone() })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::NotFound => anyhow::anyhow!("{path}: no such file in the filesystem"),
            _ => explain(&a.addr, "FileInfo", &s),
        })?
        .into_inner();
    if global.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&r))?);
    } else {
        print!("{}", to_text(&r));
    }
    Ok(())
}
