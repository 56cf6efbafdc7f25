//! Chunkservers and where the copies of each chunk live (runtime knowledge, never
//! persisted: chunkservers report their chunks when they register), placement of
//! new chunks, stale-copy cleanup and the replication planner.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use alces_proto::pb::{self, chunk_command::Command, ChunkCommand, ChunkLocation};

use crate::namespace::State;

/// Most replications one chunkserver receives at once.
const MAX_REPLICATIONS_PER_SERVER: usize = 4;
/// How long a replication may take before it is planned again.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(120);

/// One chunkserver.
#[derive(Debug)]
pub struct Server {
    /// Stable id.
    pub id: u64,
    /// host:port for clients and peers.
    pub address: String,
    /// Failure-domain label.
    pub label: String,
    /// Disks as last reported.
    pub disks: Vec<pb::DiskInfo>,
    /// Last registration or heartbeat.
    pub last_seen: Instant,
    /// False once it missed heartbeats for the timeout (its copies stop counting).
    pub connected: bool,
    /// Commands waiting for the next heartbeat reply.
    pub commands: Vec<ChunkCommand>,
    /// Chunks this server holds (any version).
    pub held: HashSet<u64>,
    /// The server must send its full chunk list again (a write session through
    /// it was abandoned, so the versions it holds are unknown).
    pub needs_report: bool,
}

impl Server {
    /// (total, used, free) bytes over healthy disks.
    pub fn space(&self) -> (u64, u64, u64) {
        self.disks
            .iter()
            .filter(|d| !d.damaged)
            .fold((0, 0, 0), |(t, u, f), d| {
                (
                    t.saturating_add(d.total_bytes),
                    u.saturating_add(d.used_bytes),
                    f.saturating_add(d.free_bytes),
                )
            })
    }

    /// Where this server is, on the wire.
    pub fn location(&self) -> ChunkLocation {
        ChunkLocation {
            server_id: self.id,
            address: self.address.clone(),
            label: self.label.clone(),
        }
    }

    fn delete(&mut self, chunk_id: u64, version: u64) {
        self.held.remove(&chunk_id);
        self.commands.push(ChunkCommand {
            command: Some(Command::Delete(pb::DeleteChunk { chunk_id, version })),
        });
    }
}

/// One reported copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy {
    /// Server holding it.
    pub server: u64,
    /// Version it has.
    pub version: u64,
}

/// Chunkservers and copies.
#[derive(Debug, Default)]
pub struct ChunkMap {
    /// Chunkservers by id.
    pub servers: HashMap<u64, Server>,
    copies: HashMap<u64, Vec<Copy>>,
    replicating: HashMap<u64, (u64, Instant)>,
    writing: HashMap<u64, (Instant, Vec<u64>)>,
}

/// A version the master should adopt for a chunk (no copy has its version).
pub type Adoption = (u64, u64);

/// Chunk counts by copies against goal.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// No valid copy.
    pub missing: u64,
    /// Fewer valid copies than the goal.
    pub under: u64,
    /// Exactly the goal.
    pub at: u64,
    /// More than the goal.
    pub over: u64,
}

impl ChunkMap {
    /// Registers (or re-registers) a chunkserver with its full chunk list; returns
    /// versions to adopt.
    pub fn register(
        &mut self,
        req: &pb::RegisterChunkserverRequest,
        now: Instant,
        st: &State,
    ) -> Vec<Adoption> {
        let mut commands = Vec::new();
        if let Some(old) = self.servers.remove(&req.server_id) {
            for c in old.held {
                self.drop_copy(req.server_id, c);
            }
            commands = old.commands;
        }
        self.servers.insert(
            req.server_id,
            Server {
                id: req.server_id,
                address: req.address.clone(),
                label: req.label.clone(),
                disks: req.disks.clone(),
                last_seen: now,
                connected: true,
                commands,
                held: HashSet::with_capacity(req.chunks.len()),
                needs_report: false,
            },
        );
        for c in &req.chunks {
            self.report(req.server_id, c.chunk_id, c.version, st);
        }
        req.chunks
            .iter()
            .filter_map(|c| self.reconcile(c.chunk_id, st, now))
            .collect()
    }

    /// Applies a heartbeat; `None` when the server must register again.
    pub fn heartbeat(
        &mut self,
        req: &pb::ChunkserverHeartbeatRequest,
        now: Instant,
        st: &State,
    ) -> Option<(Vec<ChunkCommand>, Vec<Adoption>)> {
        let s = self.servers.get_mut(&req.server_id)?;
        if !s.connected || s.needs_report {
            return None;
        }
        s.last_seen = now;
        if !req.disks.is_empty() {
            s.disks = req.disks.clone();
        }
        for id in req.removed.iter().chain(&req.damaged) {
            if let Some(s) = self.servers.get_mut(&req.server_id) {
                s.held.remove(id);
            }
            self.drop_copy(req.server_id, *id);
            if req.damaged.contains(id) {
                tracing::warn!(
                    server = req.server_id,
                    chunk = id,
                    "chunkserver reports a damaged copy"
                );
            }
        }
        for c in &req.changed {
            self.report(req.server_id, c.chunk_id, c.version, st);
            if let Some((dest, _)) = self.replicating.get(&c.chunk_id) {
                if *dest == req.server_id {
                    self.replicating.remove(&c.chunk_id);
                }
            }
        }
        let adoptions = req
            .changed
            .iter()
            .filter_map(|c| self.reconcile(c.chunk_id, st, now))
            .collect();
        let cmds = self
            .servers
            .get_mut(&req.server_id)
            .map(|s| std::mem::take(&mut s.commands))
            .unwrap_or_default();
        Some((cmds, adoptions))
    }

    fn report(&mut self, sid: u64, chunk_id: u64, version: u64, st: &State) {
        let Some(server) = self.servers.get_mut(&sid) else {
            return;
        };
        if !st.chunks.contains_key(&chunk_id) {
            server.delete(chunk_id, version);
            return;
        }
        server.held.insert(chunk_id);
        let list = self.copies.entry(chunk_id).or_default();
        match list.iter_mut().find(|c| c.server == sid) {
            // A copy's version only moves up: a heartbeat built before a write
            // session moved this copy on reports the older version and is stale
            // (a failed or abandoned session drops the copy instead).
            Some(c) => c.version = c.version.max(version),
            None => list.push(Copy {
                server: sid,
                version,
            }),
        }
    }

    fn drop_copy(&mut self, sid: u64, chunk_id: u64) {
        if let Some(list) = self.copies.get_mut(&chunk_id) {
            list.retain(|c| c.server != sid);
            if list.is_empty() {
                self.copies.remove(&chunk_id);
            }
        }
    }

    fn is_connected(&self, sid: u64) -> bool {
        self.servers.get(&sid).is_some_and(|s| s.connected)
    }

    /// Deletes stale copies of `chunk_id` when a valid copy exists; otherwise
    /// (and no write session is open on it) proposes to adopt the highest version
    /// reported.
    fn reconcile(&mut self, chunk_id: u64, st: &State, now: Instant) -> Option<Adoption> {
        let meta = st.chunks.get(&chunk_id)?;
        // Copies move to the new version while a write session is open.
        if self.writing.contains_key(&chunk_id) {
            return None;
        }
        let list = self.copies.get(&chunk_id)?.clone();
        let live: Vec<Copy> = list
            .into_iter()
            .filter(|c| self.is_connected(c.server))
            .collect();
        if live.iter().any(|c| c.version == meta.version) {
            for c in live.iter().filter(|c| c.version != meta.version) {
                tracing::info!(
                    chunk = chunk_id,
                    server = c.server,
                    version = c.version,
                    current = meta.version,
                    "deleting a stale copy"
                );
                if let Some(s) = self.servers.get_mut(&c.server) {
                    s.delete(chunk_id, c.version);
                }
                self.drop_copy(c.server, chunk_id);
            }
            return None;
        }
        let _ = now;
        let best = live.iter().map(|c| c.version).max()?;
        tracing::warn!(chunk = chunk_id, master_version = meta.version, adopted = best, "no copy has the master's version (an unfinished write session): adopting the highest reported version");
        Some((chunk_id, best))
    }

    /// Forgets chunks freed from the namespace and tells their servers to delete them.
    pub fn free(&mut self, chunk_ids: &[u64]) {
        for id in chunk_ids {
            self.writing.remove(id);
            self.replicating.remove(id);
            if let Some(list) = self.copies.remove(id) {
                for c in list {
                    if let Some(s) = self.servers.get_mut(&c.server) {
                        s.delete(*id, 0);
                    }
                }
            }
        }
    }

    /// Servers holding a valid (connected, current version) copy, most free space first.
    pub fn valid(&self, chunk_id: u64, version: u64) -> Vec<&Server> {
        let mut v: Vec<&Server> = self
            .copies
            .get(&chunk_id)
            .map(|l| {
                l.iter()
                    .filter(|c| c.version == version)
                    .filter_map(|c| self.servers.get(&c.server))
                    .filter(|s| s.connected)
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|s| std::cmp::Reverse(s.space().2));
        v
    }

    /// True while a write session is open on the chunk.
    pub fn is_writing(&self, chunk_id: u64) -> bool {
        self.writing.contains_key(&chunk_id)
    }

    /// Number of valid (connected, current version) copies.
    pub fn valid_count(&self, chunk_id: u64, version: u64) -> usize {
        self.copies.get(&chunk_id).map_or(0, |l| {
            l.iter()
                .filter(|c| c.version == version && self.is_connected(c.server))
                .count()
        })
    }

    /// Every reported copy of a chunk (any version, any state).
    pub fn copies(&self, chunk_id: u64) -> &[Copy] {
        self.copies.get(&chunk_id).map_or(&[], |v| v)
    }

    /// Picks up to `n` distinct connected servers for new copies, not in
    /// `exclude`: most free space first, spreading across labels (labels of
    /// `exclude` count as used).
    pub fn place(&self, n: usize, exclude: &[u64]) -> Vec<u64> {
        let mut cands: Vec<&Server> = self
            .servers
            .values()
            .filter(|s| s.connected && !exclude.contains(&s.id) && s.space().2 > 0)
            .collect();
        cands.sort_by_key(|s| (std::cmp::Reverse(s.space().2), s.id));
        let mut used_labels: HashSet<&str> = exclude
            .iter()
            .filter_map(|id| self.servers.get(id))
            .map(|s| s.label.as_str())
            .collect();
        let mut out = Vec::new();
        for s in &cands {
            if out.len() >= n {
                break;
            }
            if !used_labels.contains(s.label.as_str()) {
                used_labels.insert(&s.label);
                out.push(s.id);
            }
        }
        for s in &cands {
            if out.len() >= n {
                break;
            }
            if !out.contains(&s.id) {
                out.push(s.id);
            }
        }
        out
    }

    /// Records the copies of a chunk written by a new write session: the chain
    /// servers move to `version`.
    pub fn start_write(&mut self, chunk_id: u64, version: u64, chain: &[u64], now: Instant) {
        self.writing.insert(chunk_id, (now, chain.to_vec()));
        let list = self.copies.entry(chunk_id).or_default();
        for sid in chain {
            match list.iter_mut().find(|c| c.server == *sid) {
                Some(c) => c.version = version,
                None => list.push(Copy {
                    server: *sid,
                    version,
                }),
            }
            if let Some(s) = self.servers.get_mut(sid) {
                s.held.insert(chunk_id);
            }
        }
    }

    /// Closes a write session; copies on `failed` servers are dropped and deleted.
    pub fn end_write(&mut self, chunk_id: u64, failed: &[u64]) {
        self.writing.remove(&chunk_id);
        for sid in failed {
            if self.copies(chunk_id).iter().any(|c| c.server == *sid) {
                tracing::warn!(
                    chunk = chunk_id,
                    server = sid,
                    "copy failed during a write: dropping it"
                );
                if let Some(s) = self.servers.get_mut(sid) {
                    s.delete(chunk_id, 0);
                }
                self.drop_copy(*sid, chunk_id);
            }
        }
    }

    /// Periodic work: disconnects silent servers, deletes stale and surplus
    /// copies, plans up to `budget` replications (most endangered first) and
    /// returns versions to adopt.
    pub fn tick(
        &mut self,
        st: &State,
        now: Instant,
        server_timeout: Duration,
        write_timeout: Duration,
        budget: usize,
    ) -> Vec<Adoption> {
        for s in self.servers.values_mut() {
            if s.connected && now.saturating_duration_since(s.last_seen) > server_timeout {
                tracing::warn!(server = s.id, address = %s.address, "chunkserver missed its heartbeats: its copies no longer count");
                s.connected = false;
            }
        }
        let abandoned: Vec<u64> = self
            .writing
            .iter()
            .filter(|(_, (t, _))| now.saturating_duration_since(*t) >= write_timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in abandoned {
            if let Some((_, chain)) = self.writing.remove(&id) {
                tracing::warn!(
                    chunk = id,
                    "write session abandoned: asking its chunkservers for their chunk lists"
                );
                for sid in chain {
                    // The copy's version is unknown until the server reports again.
                    self.drop_copy(sid, id);
                    if let Some(s) = self.servers.get_mut(&sid) {
                        s.held.remove(&id);
                        s.needs_report = true;
                    }
                }
            }
        }
        self.replicating
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < REPLICATION_TIMEOUT);
        // Only chunks with a copy at another version need reconciling.
        let ids: Vec<u64> = self
            .copies
            .iter()
            .filter(|(id, list)| {
                st.chunks
                    .get(id)
                    .is_some_and(|m| list.iter().any(|c| c.version != m.version))
            })
            .map(|(id, _)| *id)
            .collect();
        let mut adoptions = Vec::new();
        for id in &ids {
            if let Some(a) = self.reconcile(*id, st, now) {
                adoptions.push(a);
            }
        }
        // Under- and over-goal chunks.
        let mut under: Vec<(usize, u64, u64, u32)> = Vec::new();
        for (id, meta) in &st.chunks {
            let goal = st
                .inodes
                .get(&meta.inode)
                .map_or(u32::from(meta.goal.max(1)), |i| u32::from(i.goal));
            let n = self.valid_count(*id, meta.version);
            if n == 0 || n as u32 == goal || self.writing.contains_key(id) {
                continue;
            }
            let valid: Vec<u64> = self.valid(*id, meta.version).iter().map(|s| s.id).collect();
            if (valid.len() as u32) < goal && !self.replicating.contains_key(id) {
                under.push((valid.len(), goal as u64 - valid.len() as u64, *id, goal));
            } else if valid.len() as u32 > goal && !self.replicating.contains_key(id) {
                // Remove the copy on the fullest server.
                if let Some(victim) = valid
                    .iter()
                    .filter_map(|sid| self.servers.get(sid))
                    .min_by_key(|s| s.space().2)
                    .map(|s| s.id)
                {
                    tracing::info!(chunk = id, server = victim, "deleting a copy above goal");
                    if let Some(s) = self.servers.get_mut(&victim) {
                        s.delete(*id, meta.version);
                    }
                    self.drop_copy(victim, *id);
                }
            }
        }
        under.sort_by_key(|(valid, missing, id, _)| (*valid, std::cmp::Reverse(*missing), *id));
        let mut per_dest: HashMap<u64, usize> = HashMap::new();
        for (dest, _) in self.replicating.values() {
            *per_dest.entry(*dest).or_insert(0) += 1;
        }
        let mut planned = 0;
        for (_, _, id, _) in under {
            if planned >= budget {
                break;
            }
            let Some(meta) = st.chunks.get(&id) else {
                continue;
            };
            let holders: Vec<u64> = self.copies(id).iter().map(|c| c.server).collect();
            let full: Vec<u64> = per_dest
                .iter()
                .filter(|(_, n)| **n >= MAX_REPLICATIONS_PER_SERVER)
                .map(|(s, _)| *s)
                .collect();
            let mut exclude = holders.clone();
            exclude.extend(full);
            let Some(dest) = self.place(1, &exclude).first().copied() else {
                continue;
            };
            let sources: Vec<ChunkLocation> = self
                .valid(id, meta.version)
                .iter()
                .map(|s| s.location())
                .collect();
            if let Some(s) = self.servers.get_mut(&dest) {
                s.commands.push(ChunkCommand {
                    command: Some(Command::Replicate(pb::ReplicateChunk {
                        chunk_id: id,
                        version: meta.version,
                        sources,
                    })),
                });
            }
            tracing::debug!(chunk = id, dest, "replicating an under-goal chunk");
            self.replicating.insert(id, (dest, now));
            *per_dest.entry(dest).or_insert(0) += 1;
            planned += 1;
        }
        adoptions
    }

    /// Chunk counts against goal.
    pub fn counts(&self, st: &State) -> Counts {
        let mut c = Counts::default();
        for (id, meta) in &st.chunks {
            let goal = st
                .inodes
                .get(&meta.inode)
                .map_or(u32::from(meta.goal.max(1)), |i| u32::from(i.goal))
                as usize;
            let n = self.valid_count(*id, meta.version);
            match n {
                0 => c.missing += 1,
                n if n < goal => c.under += 1,
                n if n == goal => c.at += 1,
                _ => c.over += 1,
            }
        }
        c
    }

    /// (total, used, free) bytes over connected servers.
    pub fn space(&self) -> (u64, u64, u64) {
        self.servers
            .values()
            .filter(|s| s.connected)
            .map(|s| s.space())
            .fold((0, 0, 0), |(a, b, c), (x, y, z)| {
                (
                    a.saturating_add(x),
                    b.saturating_add(y),
                    c.saturating_add(z),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::apply;
    use alces_proto::pb::changelog_record::Op;
    use alces_proto::pb::ChangelogRecord;

    fn run(st: &mut State, op: Op) {
        let rec = ChangelogRecord {
            version: st.version + 1,
            time_ns: 1,
            op: Some(op),
        };
        apply(st, &rec).unwrap();
    }

    fn reg(
        id: u64,
        label: &str,
        free: u64,
        chunks: &[(u64, u64)],
    ) -> pb::RegisterChunkserverRequest {
        pb::RegisterChunkserverRequest {
            server_id: id,
            address: format!("h{id}:1"),
            label: label.into(),
            disks: vec![pb::DiskInfo {
                free_bytes: free,
                total_bytes: free * 2,
                ..Default::default()
            }],
            chunks: chunks
                .iter()
                .map(|(c, v)| pb::ChunkInfo {
                    chunk_id: *c,
                    version: *v,
                    ..Default::default()
                })
                .collect(),
            seen_epoch: 0,
        }
    }

    fn state_with_chunk() -> State {
        let mut st = State::format("c".into(), 1 << 20, 2, 0);
        run(
            &mut st,
            Op::Create(pb::CreateOp {
                parent: 1,
                name: b"f".to_vec(),
                inode: 2,
                kind: pb::FileType::Regular as i32,
                mode: 0o644,
                ..Default::default()
            }),
        );
        run(
            &mut st,
            Op::WriteChunk(pb::WriteChunkOp {
                inode: 2,
                chunk_index: 0,
                chunk_id: 1,
                version: 1,
                created: true,
                copy_from_chunk_id: 0,
            }),
        );
        st
    }

    #[test]
    fn placement_prefers_free_space_and_spreads_labels() {
        let st = state_with_chunk();
        let mut m = ChunkMap::default();
        let now = Instant::now();
        m.register(&reg(1, "a", 100, &[]), now, &st);
        m.register(&reg(2, "a", 90, &[]), now, &st);
        m.register(&reg(3, "b", 10, &[]), now, &st);
        m.register(&reg(4, "c", 0, &[]), now, &st);
        assert_eq!(m.place(2, &[]), vec![1, 3]);
        assert_eq!(m.place(3, &[]), vec![1, 3, 2]);
        assert_eq!(m.place(9, &[]), vec![1, 3, 2]);
        assert_eq!(m.place(1, &[1]), vec![3]);
    }

    #[test]
    fn abandoned_write_session_adopts_the_reported_version() {
        let mut st = state_with_chunk();
        let mut m = ChunkMap::default();
        let t0 = Instant::now();
        assert!(m.register(&reg(1, "a", 100, &[(1, 1)]), t0, &st).is_empty());
        assert!(m.register(&reg(2, "b", 100, &[(1, 1)]), t0, &st).is_empty());
        assert_eq!(m.valid(1, 1).len(), 2);
        // A write session moves the chunk to version 2, then the client vanishes.
        run(
            &mut st,
            Op::WriteChunk(pb::WriteChunkOp {
                inode: 2,
                chunk_index: 0,
                chunk_id: 1,
                version: 2,
                created: false,
                copy_from_chunk_id: 0,
            }),
        );
        m.start_write(1, 2, &[1, 2], t0);
        assert_eq!(m.valid(1, 2).len(), 2);
        let timeout = Duration::from_secs(60);
        let later = t0 + Duration::from_secs(61);
        m.tick(&st, later, Duration::from_secs(3600), timeout, 10);
        assert!(m.valid(1, 2).is_empty());
        // Both servers are asked for their chunk lists.
        let hb = pb::ChunkserverHeartbeatRequest {
            server_id: 1,
            ..Default::default()
        };
        assert!(m.heartbeat(&hb, later, &st).is_none());
        let adopt = m.register(&reg(1, "a", 100, &[(1, 1)]), later, &st);
        assert_eq!(adopt, vec![(1, 1)]);
        run(
            &mut st,
            Op::SetChunkVersion(pb::SetChunkVersionOp {
                chunk_id: 1,
                version: 1,
            }),
        );
        assert!(m
            .register(&reg(2, "b", 100, &[(1, 1)]), later, &st)
            .is_empty());
        assert_eq!(m.valid(1, 1).len(), 2);
        assert!(m.heartbeat(&hb, later, &st).is_some());
    }

    #[test]
    fn stale_and_unknown_copies_are_deleted_and_silent_servers_stop_counting() {
        let st = state_with_chunk();
        let mut m = ChunkMap::default();
        let t0 = Instant::now();
        m.register(&reg(1, "a", 100, &[(1, 1), (55, 3)]), t0, &st);
        m.register(&reg(2, "b", 100, &[(1, 0)]), t0, &st);
        let deletes = |m: &mut ChunkMap, id: u64| -> Vec<(u64, u64)> {
            let hb = pb::ChunkserverHeartbeatRequest {
                server_id: id,
                ..Default::default()
            };
            m.heartbeat(&hb, t0, &st)
                .unwrap()
                .0
                .into_iter()
                .filter_map(|c| match c.command {
                    Some(Command::Delete(d)) => Some((d.chunk_id, d.version)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(deletes(&mut m, 1), vec![(55, 3)]);
        assert_eq!(deletes(&mut m, 2), vec![(1, 0)]);
        let c = m.counts(&st);
        assert_eq!((c.under, c.missing), (1, 0));
        // Server 1 goes silent: its copy stops counting.
        m.tick(
            &st,
            t0 + Duration::from_secs(100),
            Duration::from_secs(60),
            Duration::from_secs(3600),
            0,
        );
        assert_eq!(m.counts(&st).missing, 1);
        assert!(m.valid(1, 1).is_empty());
    }
}
