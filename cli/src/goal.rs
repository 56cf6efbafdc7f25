//! `alces goal set|get`: the goal (copies per chunk) of files and directories.

use alces_proto::geometry::MAX_GOAL;
use alces_proto::pb::{GetGoalRequest, SetGoalRequest};
use serde_json::json;

use crate::args::{FileinfoArgs, Global, GoalPathArgs, GoalSetArgs};
use crate::connect::{admin, explain};
use crate::fileinfo::resolve;

fn fs_path(p: &GoalPathArgs) -> anyhow::Result<(String, Option<String>)> {
    resolve(&FileinfoArgs {
        path: p.path.clone(),
        fs_path: p.fs_path,
    })
}

fn failed(addr: &str, what: &str, path: &str, s: &tonic::Status) -> anyhow::Error {
    match alces_proto::errno::of(s) {
        libc::ENOENT | libc::ENOTDIR => {
            anyhow::anyhow!("{path}: no such file or directory in the filesystem")
        }
        libc::EINVAL => anyhow::anyhow!("{what} refused: {}", s.message()),
        _ => explain(addr, what, s),
    }
}

/// `alces goal set N PATH [-r]`.
pub async fn set(global: &Global, args: &GoalSetArgs) -> anyhow::Result<()> {
    if args.goal == 0 || args.goal > MAX_GOAL {
        anyhow::bail!(
            "goal {} is out of range: a goal is the number of copies of each chunk, 1 to {MAX_GOAL}",
            args.goal
        );
    }
    let (path, mount_master) = fs_path(&args.path)?;
    let mut a = admin(global, mount_master.as_deref())?;
    let r = a
        .client
        .set_goal(SetGoalRequest {
            path: path.clone(),
            goal: args.goal,
            recursive: args.recursive,
        })
        .await
        .map_err(|s| failed(&a.addr, "SetGoal", &path, &s))?
        .into_inner();
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "path": path,
                "goal": args.goal,
                "recursive": args.recursive,
                "changed": r.changed,
                "visited": r.visited,
            }))?
        );
    } else {
        println!(
            "{path}: goal {} ({} of {} inodes changed)",
            args.goal, r.changed, r.visited
        );
    }
    Ok(())
}

/// `alces goal get PATH`.
pub async fn get(global: &Global, args: &GoalPathArgs) -> anyhow::Result<()> {
    let (path, mount_master) = fs_path(args)?;
    let mut a = admin(global, mount_master.as_deref())?;
    let r = a
        .client
        .get_goal(GetGoalRequest { path: path.clone() })
        .await
        .map_err(|s| failed(&a.addr, "GetGoal", &path, &s))?
        .into_inner();
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "path": path,
                "inode": r.inode,
                "goal": r.goal,
            }))?
        );
    } else {
        println!("{path}: goal {}", r.goal);
    }
    Ok(())
}
