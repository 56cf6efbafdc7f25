//! Goals (copies per chunk) set by administrators: the `SetGoal` op decided
//! from a path (optionally a whole tree), and the goal of a path.

use alces_proto::pb::{self, changelog_record::Op};

use tonic::Status;

use crate::core::Core;
use crate::state::ops::check_goal;

use crate::state::error::FsResult;
use crate::state::namespace::State;

/// Decides the op setting `goal` on `path` (and, when `recursive`, on every
/// inode below it). Returns the op (None when nothing changes) and the number
/// of inodes visited.
pub fn prepare_set_goal(
    st: &State,
    path: &str,
    goal: u32,
    recursive: bool,
) -> FsResult<(Option<Op>, u64)> {
    check_goal(goal)?;
    let ino = st.resolve_absolute(path)?;
    let mut todo = vec![ino];
    let mut inodes = Vec::new();
    let mut visited = 0u64;
    while let Some(i) = todo.pop() {
        let node = st.get(i)?;
        visited += 1;
        if u32::from(node.goal) != goal {
            inodes.push(i);
        }
        if recursive {
            if let Some(entries) = node.entries() {
                todo.extend(entries.values().copied());
            }
        }
    }
    // A hard-linked file reached twice is listed once.
    inodes.sort_unstable();
    inodes.dedup();
    if inodes.is_empty() {
        return Ok((None, visited));
    }
    Ok((Some(Op::SetGoal(pb::SetGoalOp { inodes, goal })), visited))
}

/// Sets the goal of a path (or a tree); logged in the changelog.
pub async fn set_goal(core: &Core, r: pb::SetGoalRequest) -> Result<pb::SetGoalReply, Status> {
    core.mutate(|core, inner| {
        let (op, visited) = prepare_set_goal(&inner.state, &r.path, r.goal, r.recursive)?;
        let Some(op) = op else {
            return Ok((
                None,
                pb::SetGoalReply {
                    changed: 0,
                    visited,
                },
            ));
        };
        let changed = match &op {
            pb::changelog_record::Op::SetGoal(o) => o.inodes.len() as u64,
            _ => 0,
        };
        let v = core.commit(inner, op)?;
        tracing::info!(path = %r.path, goal = r.goal, recursive = r.recursive, changed, "goal set");
        Ok((Some(v), pb::SetGoalReply { changed, visited }))
    })
    .await
}

/// The goal of a path.
pub fn get_goal(core: &Core, path: &str) -> Result<pb::GetGoalReply, Status> {
    core.read(|inner| {
        let ino = inner.state.resolve_absolute(path)?;
        Ok(pb::GetGoalReply {
            goal: u32::from(inner.state.get(ino)?.goal),
            inode: ino,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ops::apply;
    use pb::ChangelogRecord;

    fn run(st: &mut State, op: Op) -> FsResult<()> {
        let rec = ChangelogRecord {
            reply: None,
            version: st.version + 1,
            time_ns: 1,
            op: Some(op),
        };
        apply(st, &rec).map(|_| ())
    }

    fn create(st: &mut State, parent: u64, name: &[u8], inode: u64, dir: bool) {
        let kind = if dir {
            pb::FileType::Directory
        } else {
            pb::FileType::Regular
        };
        run(
            st,
            Op::Create(pb::CreateOp {
                parent,
                name: name.to_vec(),
                inode,
                kind: kind as i32,
                mode: 0o755,
                ..Default::default()
            }),
        )
        .unwrap();
    }

    #[test]
    fn set_goal_on_a_tree_and_bad_goals() {
        let mut st = State::format("c".into(), 1 << 20, 2, 0);
        create(&mut st, 1, b"d", 2, true);
        create(&mut st, 2, b"f", 3, false);
        create(&mut st, 1, b"g", 4, false);
        assert_eq!(
            prepare_set_goal(&st, "/d", 0, true).unwrap_err().errno,
            libc::EINVAL
        );
        assert_eq!(
            prepare_set_goal(&st, "/d", 10, true).unwrap_err().errno,
            libc::EINVAL
        );
        assert_eq!(
            prepare_set_goal(&st, "/nope", 3, false).unwrap_err().errno,
            libc::ENOENT
        );
        assert_eq!(
            prepare_set_goal(&st, "d", 3, false).unwrap_err().errno,
            libc::EINVAL
        );
        let (op, visited) = prepare_set_goal(&st, "/d", 3, true).unwrap();
        assert_eq!(visited, 2);
        run(&mut st, op.unwrap()).unwrap();
        assert_eq!(st.get(2).unwrap().goal, 3);
        assert_eq!(st.get(3).unwrap().goal, 3);
        assert_eq!(st.get(4).unwrap().goal, 2);
        // Nothing to change.
        assert!(prepare_set_goal(&st, "/d", 3, true).unwrap().0.is_none());
        // New entries inherit the directory's goal.
        create(&mut st, 2, b"h", 5, false);
        assert_eq!(st.get(5).unwrap().goal, 3);
        // A replayed op with a bad goal or inode is refused without change.
        assert!(run(
            &mut st,
            Op::SetGoal(pb::SetGoalOp {
                inodes: vec![4, 99],
                goal: 5
            })
        )
        .is_err());
        assert_eq!(st.get(4).unwrap().goal, 2);
    }
}
