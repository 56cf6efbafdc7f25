//! Chunkservers and where the copies of each chunk live (runtime knowledge, never
//! persisted: chunkservers report their chunks when they register), placement of
//! new chunks, stale-copy cleanup and the replication planner.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use alces_proto::pb::{self, chunk_command::Command, ChunkCommand, ChunkLocation};

use crate::state::namespace::State;

/// How fast and how far the replication loop works.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Replications (under-goal, drain and rebalance copies) started per tick.
    pub per_tick: usize,
    /// Most replications one chunkserver receives at once.
    pub per_server: usize,
    /// Usage difference (percentage points of disk space used) between the
    /// fullest and the emptiest chunkserver above which chunks are moved.
    pub rebalance_threshold: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            per_tick: 32,
            per_server: 4,
            rebalance_threshold: 10.0,
        }
    }
}
/// When a silent chunkserver is shown disconnected, and when its copies stop
/// counting.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Silence after which it is disconnected: no new chunks, sessions or
    /// replications go to it.
    pub disconnect: Duration,
    /// Silence after which its copies stop counting toward goals (and are
    /// replicated elsewhere); it must then register again.
    pub grace: Duration,
}

/// How long a replication may take before it is planned again.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a new write session on a chunk waits for a replication of that
/// chunk in flight. Every write session moves the chunk's version on, which
/// makes the copy being made stale: a file written again and again (a log
/// fsynced several times a second) would otherwise never get its missing copy
/// back. Past this the replication is given up and the write goes ahead; the
/// chunk is planned again once the write session ends.
pub const WRITE_WAITS_FOR_REPLICATION: Duration = Duration::from_secs(10);

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
    /// Heard within the disconnect delay: it gets new chunks, write sessions
    /// and replications. False as soon as its heartbeats stop for that delay.
    pub connected: bool,
    /// When it was last seen disconnected (None while connected).
    pub disconnected_at: Option<Instant>,
    /// Its copies count toward goals: true until it has been silent for the
    /// grace (`--chunkserver-timeout`); then it must register again.
    pub counted: bool,
    /// Commands waiting for the next heartbeat reply.
    pub commands: Vec<ChunkCommand>,
    /// Chunks this server holds (any version).
    pub held: HashSet<u64>,
    /// The server must send its full chunk list again (a write session through
    /// it was abandoned, so the versions it holds are unknown).
    pub needs_report: bool,
    /// Being drained: takes no new copies, and its copies stop counting toward
    /// goals (they are copied elsewhere, then deleted here).
    pub draining: bool,
    /// A client reported it failed during a write and it has not sent a
    /// heartbeat since: it gets no new copies meanwhile.
    pub suspect: bool,
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

    /// Fraction of its disk space in use (0 when it reports no space).
    pub fn usage(&self) -> f64 {
        let (t, u, _) = self.space();
        if t == 0 {
            0.0
        } else {
            u as f64 / t as f64
        }
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
    /// Chunks freed by changelog records that are not durable yet, by the
    /// metadata version that freed them. Their copies are deleted only once that
    /// version is durable: a master crash before then brings the files back,
    /// and their data must still be there.
    deferred: std::collections::VecDeque<(u64, Vec<u64>)>,
    deferred_ids: HashSet<u64>,
    /// Copies that failed during a write session: (chunk, server) -> the session
    /// version. Such a copy may hold the current version number with only part
    /// of the data, so it is deleted when reported, never served.
    failed: HashMap<(u64, u64), u64>,
    /// Copy-on-write copies being made under reserved ids, before the file
    /// records them: chunk id -> (inode, chunk index). Reports of these ids
    /// are not deleted as unknown.
    copying: HashMap<u64, (u64, u64)>,
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
    /// Highest goal of any chunk (0 without chunks).
    pub max_goal: usize,
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
        // The drain is logged metadata: it survives master restarts.
        let draining = st.draining.contains(&req.server_id);
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
                disconnected_at: None,
                counted: true,
                commands,
                held: HashSet::with_capacity(req.chunks.len()),
                needs_report: false,
                draining,
                suspect: false,
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
        if !s.counted || s.needs_report {
            return None;
        }
        if !s.connected {
            // Back within the grace: its copies never stopped counting.
            tracing::info!(server = s.id, address = %s.address, "chunkserver connected again");
            s.connected = true;
            s.disconnected_at = None;
        }
        s.last_seen = now;
        s.suspect = false;
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
        if !st.chunks.contains_key(&chunk_id)
            && !self.deferred_ids.contains(&chunk_id)
            && !self.copying.contains_key(&chunk_id)
        {
            server.delete(chunk_id, version);
            return;
        }
        if let Some(v) = self.failed.get(&(chunk_id, sid)) {
            if version <= *v {
                tracing::info!(
                    chunk = chunk_id,
                    server = sid,
                    version,
                    "deleting a copy that failed during a write session"
                );
                server.delete(chunk_id, version);
                return;
            }
        }
        server.held.insert(chunk_id);
        let list = self.copies.entry(chunk_id).or_default();
        match list.iter_mut().find(|c| c.server == sid) {
            // A copy is only ever moved back by a full re-registration (which
            // forgets the server's copies first): a lower version in a
            // heartbeat is a delayed report from before a write session moved
            // the copy on, and must not make the master adopt an old version.
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

    fn is_counted(&self, sid: u64) -> bool {
        self.servers.get(&sid).is_some_and(|s| s.counted)
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
            .filter(|c| self.is_counted(c.server))
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

    /// Frees `chunk_ids` once metadata `version` is durable (see
    /// [`ChunkMap::release_durable`]).
    pub fn free_after(&mut self, version: u64, chunk_ids: Vec<u64>) {
        if chunk_ids.is_empty() {
            return;
        }
        self.deferred_ids.extend(chunk_ids.iter().copied());
        self.deferred.push_back((version, chunk_ids));
    }

    /// Frees the deferred chunks whose freeing record is durable (version at or
    /// below `durable`).
    pub fn release_durable(&mut self, durable: u64) {
        while self.deferred.front().is_some_and(|(v, _)| *v <= durable) {
            if let Some((_, ids)) = self.deferred.pop_front() {
                for id in &ids {
                    self.deferred_ids.remove(id);
                }
                self.free(&ids);
            }
        }
    }

    /// Forgets chunks freed from the namespace and tells their servers to delete
    /// them now.
    pub fn free(&mut self, chunk_ids: &[u64]) {
        for id in chunk_ids {
            self.failed.retain(|(c, _), _| c != id);
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

    /// Records that a copy-on-write copy of chunk `index` of `inode` is being
    /// made under the reserved id `chunk_id`.
    pub fn start_copy(&mut self, chunk_id: u64, inode: u64, index: u64) {
        self.copying.insert(chunk_id, (inode, index));
    }

    /// True while a copy-on-write copy of chunk `index` of `inode` is being made.
    pub fn is_copying(&self, inode: u64, index: u64) -> bool {
        self.copying.values().any(|c| *c == (inode, index))
    }

    /// Ends the copy made under `chunk_id`. When the file now records it
    /// (`kept`, after [`ChunkMap::start_write`] of its first session), copies on
    /// `servers` (whose copy failed) are deleted and deleted again if ever
    /// reported; otherwise every copy, on `servers` and any reported since, is
    /// deleted.
    pub fn end_copy(&mut self, chunk_id: u64, servers: &[u64], kept: bool) {
        self.copying.remove(&chunk_id);
        if kept {
            for sid in servers {
                self.failed.insert((chunk_id, *sid), 1);
                if let Some(s) = self.servers.get_mut(sid) {
                    s.delete(chunk_id, 0);
                }
                self.drop_copy(*sid, chunk_id);
            }
            return;
        }
        let mut on: Vec<u64> = servers.to_vec();
        if let Some(list) = self.copies.remove(&chunk_id) {
            on.extend(list.iter().map(|c| c.server));
        }
        on.sort_unstable();
        on.dedup();
        for sid in on {
            if let Some(s) = self.servers.get_mut(&sid) {
                s.delete(chunk_id, 0);
            }
        }
    }

    /// Servers holding a valid copy (current version, on a server whose copies
    /// count): connected servers first, then most free space first.
    pub fn valid(&self, chunk_id: u64, version: u64) -> Vec<&Server> {
        let mut v: Vec<&Server> = self
            .copies
            .get(&chunk_id)
            .map(|l| {
                l.iter()
                    .filter(|c| c.version == version)
                    .filter_map(|c| self.servers.get(&c.server))
                    .filter(|s| s.counted)
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|s| (!s.connected, std::cmp::Reverse(s.space().2)));
        v
    }

    /// The valid copies a write session or a copy should go through: those on
    /// connected servers, or, when none is connected, every valid one (a
    /// server silent for a few seconds may well answer).
    pub fn holders(&self, chunk_id: u64, version: u64) -> Vec<u64> {
        let valid = self.valid(chunk_id, version);
        let connected: Vec<u64> = valid.iter().filter(|s| s.connected).map(|s| s.id).collect();
        if connected.is_empty() {
            valid.iter().map(|s| s.id).collect()
        } else {
            connected
        }
    }

    /// True while a write session is open on the chunk.
    pub fn is_writing(&self, chunk_id: u64) -> bool {
        self.writing.contains_key(&chunk_id)
    }

    /// Number of valid copies (current version, counted).
    pub fn valid_count(&self, chunk_id: u64, version: u64) -> usize {
        self.copies.get(&chunk_id).map_or(0, |l| {
            l.iter()
                .filter(|c| c.version == version && self.is_counted(c.server))
                .count()
        })
    }

    /// Every reported copy of a chunk (any version, any state).
    pub fn copies(&self, chunk_id: u64) -> &[Copy] {
        self.copies.get(&chunk_id).map_or(&[], |v| v)
    }

    /// Picks up to `n` distinct connected servers for new copies, not in
    /// `exclude`, spreading across labels (labels of `exclude` count as used).
    /// Most free space first, but servers within 10% of each other's free space
    /// count as equal and come in random order, so equally full servers (or
    /// several sharing one disk) share new chunks instead of the same ones taking
    /// every chunk.
    pub fn place(&self, n: usize, exclude: &[u64]) -> Vec<u64> {
        let mut cands: Vec<&Server> = self
            .servers
            .values()
            .filter(|s| {
                s.connected
                    && !s.draining
                    && !s.suspect
                    && !exclude.contains(&s.id)
                    && s.space().2 > 0
            })
            .collect();
        cands.sort_by_key(|s| (std::cmp::Reverse(s.space().2), s.id));
        shuffle_bands(&mut cands, |s| s.space().2);
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
        // Copies that failed an earlier session are now stale by version.
        self.failed.retain(|(c, _), _| *c != chunk_id);
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

    /// Closes a write session at `version`; copies on `failed` servers are
    /// dropped and deleted (and deleted again if they are ever reported).
    pub fn end_write(&mut self, chunk_id: u64, version: u64, failed: &[u64]) {
        self.writing.remove(&chunk_id);
        for sid in failed {
            self.failed.insert((chunk_id, *sid), version);
            tracing::warn!(
                chunk = chunk_id,
                server = sid,
                "copy failed during a write: dropping it"
            );
            // The delete is queued even when the master has no copy on record:
            // the server may hold part of the session's data. It runs before
            // any later replication of the chunk to that server (commands are
            // carried out in order).
            if let Some(s) = self.servers.get_mut(sid) {
                s.suspect = true;
                s.delete(chunk_id, 0);
            }
            self.drop_copy(*sid, chunk_id);
        }
    }

    /// Gives up the write session open on `chunk_id`: the copies' versions are
    /// unknown until their servers report their chunk lists again.
    pub fn abandon_write(&mut self, chunk_id: u64) {
        if let Some((_, chain)) = self.writing.remove(&chunk_id) {
            tracing::warn!(
                chunk = chunk_id,
                "write session abandoned: asking its chunkservers for their chunk lists"
            );
            for sid in chain {
                // The copy's version is unknown until the server reports again.
                self.drop_copy(sid, chunk_id);
                if let Some(s) = self.servers.get_mut(&sid) {
                    s.held.remove(&chunk_id);
                    s.needs_report = true;
                }
            }
        }
    }

    /// Periodic work: marks servers silent for `liveness.disconnect` disconnected
    /// and stops counting the copies of those silent for `liveness.grace`,
    /// deletes stale and surplus copies, plans up to `policy.per_tick`
    /// replications (most endangered first) and returns versions to adopt.
    pub fn tick(
        &mut self,
        st: &State,
        now: Instant,
        liveness: Liveness,
        write_timeout: Duration,
        policy: &Policy,
    ) -> Vec<Adoption> {
        for s in self.servers.values_mut() {
            let silent = now.saturating_duration_since(s.last_seen);
            if s.connected && silent > liveness.disconnect {
                tracing::warn!(server = s.id, address = %s.address, silent_ms = silent.as_millis() as u64, grace_secs = liveness.grace.as_secs(), "chunkserver disconnected (no heartbeat): its copies count until the grace ends");
                s.connected = false;
                s.disconnected_at = Some(now);
                // Replications queued for it would never run.
                s.commands
                    .retain(|c| !matches!(c.command, Some(Command::Replicate(_))));
            }
            if s.counted && silent > liveness.grace {
                tracing::warn!(server = s.id, address = %s.address, "chunkserver silent past its grace: its copies no longer count");
                s.counted = false;
            }
        }
        // Replications to servers that went away are planned again elsewhere.
        let servers = &self.servers;
        self.replicating
            .retain(|_, (dest, _)| servers.get(dest).is_some_and(|s| s.connected));
        let abandoned: Vec<u64> = self
            .writing
            .iter()
            .filter(|(_, (t, _))| now.saturating_duration_since(*t) >= write_timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in abandoned {
            self.abandon_write(id);
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
        let mut under: Vec<(usize, u64)> = Vec::new();
        for (id, meta) in &st.chunks {
            if self.writing.contains_key(id) || self.replicating.contains_key(id) {
                continue;
            }
            let goal = goal_of(st, meta);
            let valid = self.valid_ids(*id, meta.version);
            if valid.is_empty() {
                continue;
            }
            let keep: Vec<u64> = valid
                .iter()
                .copied()
                .filter(|sid| !self.servers.get(sid).is_some_and(|s| s.draining))
                .collect();
            if keep.len() < goal {
                under.push((keep.len(), *id));
            } else if valid.len() > goal {
                // Surplus: copies on draining servers go first, then copies on
                // the fullest servers.
                let mut victims: Vec<u64> = valid
                    .iter()
                    .copied()
                    .filter(|v| !keep.contains(v))
                    .collect();
                let mut rest = keep.clone();
                rest.sort_by(|a, b| {
                    let ua = self.servers.get(a).map_or(0.0, Server::usage);
                    let ub = self.servers.get(b).map_or(0.0, Server::usage);
                    ub.total_cmp(&ua).then(a.cmp(b))
                });
                victims.extend(rest.iter().take(keep.len() - goal));
                for victim in victims {
                    tracing::info!(chunk = id, server = victim, "deleting a copy above goal");
                    if let Some(s) = self.servers.get_mut(&victim) {
                        s.delete(*id, meta.version);
                    }
                    self.drop_copy(victim, *id);
                }
            }
        }
        // Most endangered first: fewest copies left.
        under.sort_unstable();
        let mut per_dest: HashMap<u64, usize> = HashMap::new();
        for (dest, _) in self.replicating.values() {
            *per_dest.entry(*dest).or_insert(0) += 1;
        }
        let mut planned = 0;
        let rebalance = under.is_empty();
        for (_, id) in under {
            if planned >= policy.per_tick {
                break;
            }
            if self.plan_copy(st, id, None, &mut per_dest, policy, now) {
                planned += 1;
            }
        }
        if rebalance && planned < policy.per_tick && self.replicating.is_empty() {
            self.plan_rebalance(st, &mut per_dest, policy, now);
        }
        adoptions
    }

    /// Valid copies' servers of a chunk.
    fn valid_ids(&self, chunk_id: u64, version: u64) -> Vec<u64> {
        self.valid(chunk_id, version).iter().map(|s| s.id).collect()
    }

    /// Sends one Replicate command for `id` to `dest` (or a placed server);
    /// false when no destination is possible.
    fn plan_copy(
        &mut self,
        st: &State,
        id: u64,
        dest: Option<u64>,
        per_dest: &mut HashMap<u64, usize>,
        policy: &Policy,
        now: Instant,
    ) -> bool {
        let Some(meta) = st.chunks.get(&id) else {
            return false;
        };
        let dest = match dest {
            Some(d) => d,
            None => {
                let mut exclude: Vec<u64> = self.copies(id).iter().map(|c| c.server).collect();
                exclude.extend(
                    per_dest
                        .iter()
                        .filter(|(_, n)| **n >= policy.per_server)
                        .map(|(s, _)| *s),
                );
                match self.place(1, &exclude).first().copied() {
                    Some(d) => d,
                    None => return false,
                }
            }
        };
        // Sources a destination can reach: copies on connected servers.
        let mut sources: Vec<&Server> = self.valid(id, meta.version);
        sources.retain(|s| s.connected);
        // Copies on servers not being drained are read first.
        sources.sort_by_key(|s| s.draining);
        let sources: Vec<ChunkLocation> = sources.iter().map(|s| s.location()).collect();
        if sources.is_empty() {
            return false;
        }
        let Some(s) = self.servers.get_mut(&dest) else {
            return false;
        };
        // A copy that failed a write on `dest` was deleted by a command queued
        // before this one: the copy made now is good.
        self.failed.remove(&(id, dest));
        s.commands.push(ChunkCommand {
            command: Some(Command::Replicate(pb::ReplicateChunk {
                chunk_id: id,
                version: meta.version,
                sources,
            })),
        });
        tracing::debug!(chunk = id, dest, "replicating a chunk");
        self.replicating.insert(id, (dest, now));
        *per_dest.entry(dest).or_insert(0) += 1;
        true
    }

    /// Moves a few chunks from the fullest to the emptiest server when their
    /// usage differs by more than the threshold (the surplus copy on the fullest
    /// server is deleted once the new one is reported).
    fn plan_rebalance(
        &mut self,
        st: &State,
        per_dest: &mut HashMap<u64, usize>,
        policy: &Policy,
        now: Instant,
    ) {
        let live: Vec<&Server> = self
            .servers
            .values()
            .filter(|s| s.connected && !s.draining && s.space().0 > 0)
            .collect();
        let (Some(full), Some(empty)) = (
            live.iter().max_by(|a, b| a.usage().total_cmp(&b.usage())),
            live.iter().min_by(|a, b| a.usage().total_cmp(&b.usage())),
        ) else {
            return;
        };
        let diff = (full.usage() - empty.usage()) * 100.0;
        if full.id == empty.id || diff <= policy.rebalance_threshold {
            return;
        }
        let (from, to) = (full.id, empty.id);
        let mut picks: Vec<u64> = full
            .held
            .iter()
            .copied()
            .filter(|id| {
                !empty.held.contains(id)
                    && !self.writing.contains_key(id)
                    && st.chunks.get(id).is_some_and(|m| {
                        let v = self.valid_ids(*id, m.version);
                        v.contains(&from) && v.len() == goal_of(st, m)
                    })
            })
            .collect();
        picks.sort_unstable();
        let n = policy.per_server.min(policy.per_tick);
        if !picks.is_empty() {
            tracing::info!(
                from,
                to,
                usage_difference = diff,
                "rebalancing: moving chunks to the emptiest chunkserver"
            );
        }
        for id in picks.into_iter().take(n) {
            self.plan_copy(st, id, Some(to), per_dest, policy, now);
        }
    }

    /// Starts (`true`) or ends a drain of a server; false when it is unknown.
    pub fn set_draining(&mut self, server_id: u64, draining: bool) -> bool {
        match self.servers.get_mut(&server_id) {
            Some(s) => {
                s.draining = draining;
                true
            }
            None => false,
        }
    }

    /// Chunks whose copy on `server_id` is still needed: fewer than their goal
    /// valid copies exist on servers not being drained.
    pub fn chunks_to_move(&self, st: &State, server_id: u64) -> u64 {
        let Some(s) = self.servers.get(&server_id) else {
            return 0;
        };
        s.held
            .iter()
            .filter(|id| {
                st.chunks.get(id).is_some_and(|m| {
                    self.valid(**id, m.version)
                        .iter()
                        .filter(|o| !o.draining)
                        .count()
                        < goal_of(st, m)
                })
            })
            .count() as u64
    }

    /// A replication of `chunk_id` that a new write session must wait for:
    /// its destination and how long it has been running. One running for
    /// [`WRITE_WAITS_FOR_REPLICATION`] or more is given up instead (the copy
    /// it makes is stale once the write starts, and is deleted when reported),
    /// and `None` is returned.
    pub fn replication_blocking_write(
        &mut self,
        chunk_id: u64,
        now: Instant,
    ) -> Option<(u64, Duration)> {
        let (dest, started) = *self.replicating.get(&chunk_id)?;
        let age = now.saturating_duration_since(started);
        if age < WRITE_WAITS_FOR_REPLICATION {
            return Some((dest, age));
        }
        tracing::warn!(
            chunk = chunk_id,
            server = dest,
            waited_ms = age.as_millis() as u64,
            "a replication kept a writer waiting too long: giving it up for the write"
        );
        self.replicating.remove(&chunk_id);
        None
    }

    /// Replications in flight.
    pub fn replications_in_flight(&self) -> usize {
        self.replicating.len()
    }

    /// Chunk counts against goal.
    pub fn counts(&self, st: &State) -> Counts {
        let mut c = Counts::default();
        for (id, meta) in &st.chunks {
            let goal = goal_of(st, meta);
            c.max_goal = c.max_goal.max(goal);
            let valid = self.valid(*id, meta.version);
            // Copies on draining servers do not count toward the goal.
            let n = valid.iter().filter(|s| !s.draining).count();
            match n {
                0 if valid.is_empty() => c.missing += 1,
                0 => c.under += 1,
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

/// Goal of the file owning a chunk (1 if unknown).
/// The goal of a chunk: its file's, or (for a chunk only a snapshot or the trash
/// still references) the goal recorded with the chunk.
fn goal_of(st: &State, meta: &crate::state::namespace::ChunkMeta) -> usize {
    st.inodes
        .get(&meta.inode)
        .map_or(usize::from(meta.goal.max(1)), |i| usize::from(i.goal))
}

/// Shuffles runs of `v` (sorted by descending `free`) whose values are within 10%
/// of the run's first one, keeping the runs in order.
fn shuffle_bands<T>(v: &mut [T], free: impl Fn(&T) -> u64) {
    use rand::seq::SliceRandom;
    let mut start = 0;
    while start < v.len() {
        let floor = free(&v[start]) - free(&v[start]) / 10;
        let mut end = start + 1;
        while end < v.len() && free(&v[end]) >= floor {
            end += 1;
        }
        v[start..end].shuffle(&mut rand::rng());
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ops::apply;
    use alces_proto::pb::changelog_record::Op;
    use alces_proto::pb::ChangelogRecord;

    fn run(st: &mut State, op: Op) {
        let rec = ChangelogRecord {
            reply: None,
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

    fn deletes_for(m: &mut ChunkMap, sid: u64) -> Vec<u64> {
        let s = m.servers.get_mut(&sid).unwrap();
        std::mem::take(&mut s.commands)
            .into_iter()
            .filter_map(|c| match c.command {
                Some(Command::Delete(d)) => Some(d.chunk_id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_copy_on_write_copy_being_made_is_kept_and_discarded_or_recorded() {
        let st = state_with_chunk();
        let mut m = ChunkMap::default();
        let now = Instant::now();
        m.register(&reg(1, "a", 100, &[(1, 1)]), now, &st);
        m.register(&reg(2, "b", 100, &[(1, 1)]), now, &st);
        // Chunk 7 is a reserved id being copied: reports of it are not deleted
        // as unknown while the copy is made.
        m.start_copy(7, 2, 0);
        assert!(m.is_copying(2, 0));
        assert!(!m.is_copying(2, 1));
        assert!(hb(&mut m, &st, 1, &[(7, 1)], now).is_empty());
        // Not recorded in the file: every copy is deleted (reported or asked).
        m.end_copy(7, &[2], false);
        assert!(!m.is_copying(2, 0));
        assert_eq!(deletes_for(&mut m, 1), vec![7]);
        assert_eq!(deletes_for(&mut m, 2), vec![7]);
        assert!(m.copies(7).is_empty());
        // Recorded after a copy that failed on server 2: its late copy at the
        // session's version is deleted whenever reported, never counted.
        m.start_copy(8, 2, 0);
        m.start_write(8, 1, &[1], now);
        m.end_copy(8, &[2], true);
        assert_eq!(deletes_for(&mut m, 2), vec![8]);
        let mut st = st;
        st.chunks.insert(
            8,
            crate::state::namespace::ChunkMeta {
                version: 1,
                inode: 2,
                refs: 1,
                goal: 2,
            },
        );
        let cmds = hb(&mut m, &st, 2, &[(8, 1)], now);
        assert!(
            matches!(&cmds[..], [Command::Delete(d)] if d.chunk_id == 8),
            "{cmds:?}"
        );
        assert_eq!(m.valid_count(8, 1), 1);
    }

    #[test]
    fn freed_chunks_are_deleted_only_once_the_free_is_durable() {
        let st = state_with_chunk();
        let mut m = ChunkMap::default();
        let now = Instant::now();
        m.register(&reg(1, "a", 100, &[(1, 1)]), now, &st);
        assert!(deletes_for(&mut m, 1).is_empty());
        // Version 9 frees chunk 1 (the record is not durable yet).
        let mut st = st;
        st.chunks.remove(&1);
        m.free_after(9, vec![1]);
        m.release_durable(8);
        assert!(deletes_for(&mut m, 1).is_empty(), "deleted before durable");
        // A full report in the meantime does not treat it as unknown.
        m.register(&reg(1, "a", 100, &[(1, 1)]), now, &st);
        assert!(
            deletes_for(&mut m, 1).is_empty(),
            "unknown-chunk path deleted it"
        );
        m.release_durable(9);
        assert_eq!(deletes_for(&mut m, 1), vec![1]);
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
        let sorted = |mut v: Vec<u64>| {
            v.sort();
            v
        };
        let mut first = HashMap::<u64, u32>::new();
        for _ in 0..400 {
            // 1 and 2 (label a) are within 10% of each other: either leads; 3 is the
            // only b with space and 4 has none.
            let two = m.place(2, &[]);
            assert!(two[1] == 3 && (two[0] == 1 || two[0] == 2), "{two:?}");
            *first.entry(two[0]).or_default() += 1;
            let three = m.place(3, &[]);
            assert_eq!(three[1], 3, "{three:?}");
            assert_eq!(sorted(three), vec![1, 2, 3]);
            assert_eq!(sorted(m.place(9, &[])), vec![1, 2, 3]);
            // Label a is taken by the excluded server 1: b comes first.
            assert_eq!(m.place(1, &[1]), vec![3]);
        }
        assert!(first[&1] > 100 && first[&2] > 100, "{first:?}");
        // Far apart in free space, the emptier server always leads.
        m.register(&reg(5, "d", 1000, &[]), now, &st);
        for _ in 0..100 {
            assert_eq!(m.place(1, &[])[0], 5);
        }
    }

    #[test]
    fn placement_spreads_over_servers_with_equal_space() {
        let st = state_with_chunk();
        let mut m = ChunkMap::default();
        let now = Instant::now();
        for id in 1..=3 {
            m.register(&reg(id, "", 100, &[]), now, &st);
        }
        let mut picked = HashMap::<u64, u32>::new();
        for _ in 0..3000 {
            let two = m.place(2, &[]);
            assert_eq!(two.len(), 2);
            assert_ne!(two[0], two[1]);
            for id in two {
                *picked.entry(id).or_default() += 1;
            }
        }
        // 2000 expected each; every server takes a fair share.
        for id in 1..=3 {
            let n = picked.get(&id).copied().unwrap_or(0);
            assert!(
                (1700..=2300).contains(&n),
                "server {id} got {n} of 6000: {picked:?}"
            );
        }
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
        m.tick(
            &st,
            later,
            grace(Duration::from_secs(3600)),
            timeout,
            &Policy::default(),
        );
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
    fn a_late_heartbeat_from_before_a_write_does_not_roll_the_chunk_back() {
        let mut st = state_with_chunk();
        let mut m = ChunkMap::default();
        let t0 = Instant::now();
        m.register(&reg(1, "a", 100, &[(1, 1)]), t0, &st);
        m.register(&reg(2, "b", 100, &[(1, 1)]), t0, &st);
        run(
            &mut st,
            Op::WriteChunk(pb::WriteChunkOp {
                inode: 2,
                chunk_index: 0,
                chunk_id: 1,
                version: 2,
                created: false,
                ..Default::default()
            }),
        );
        m.start_write(1, 2, &[1, 2], t0);
        m.end_write(1, 2, &[]);
        // Heartbeats gathered before the write arrive after the session ended.
        for sid in [1, 2] {
            let hb = pb::ChunkserverHeartbeatRequest {
                server_id: sid,
                changed: vec![pb::ChunkInfo {
                    chunk_id: 1,
                    version: 1,
                    ..Default::default()
                }],
                ..Default::default()
            };
            let (_, adopt) = m.heartbeat(&hb, t0, &st).unwrap();
            assert!(adopt.is_empty(), "adopted an older version: {adopt:?}");
        }
        let adopt = m.tick(
            &st,
            t0 + Duration::from_secs(1),
            grace(Duration::from_secs(60)),
            Duration::from_secs(60),
            &Policy::default(),
        );
        assert!(adopt.is_empty(), "adopted an older version: {adopt:?}");
        assert_eq!(m.valid(1, 2).len(), 2);
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
        let quiet = Policy {
            per_tick: 0,
            ..Policy::default()
        };
        // Server 1 goes silent: it is disconnected after a few seconds, but
        // its copy counts during the grace.
        let (g, long) = (grace(Duration::from_secs(60)), Duration::from_secs(3600));
        m.tick(&st, t0 + Duration::from_secs(4), g, long, &quiet);
        let s1 = &m.servers[&1];
        assert!(!s1.connected && s1.counted && s1.disconnected_at.is_some());
        assert_eq!(m.counts(&st), c);
        assert_eq!(m.valid(1, 1).len(), 1);
        assert!(
            m.place(2, &[]).iter().all(|id| *id != 1),
            "a disconnected server gets no new chunk"
        );
        // Back within the grace: connected again, nothing lost.
        let back = pb::ChunkserverHeartbeatRequest {
            server_id: 1,
            ..Default::default()
        };
        assert!(m
            .heartbeat(&back, t0 + Duration::from_secs(5), &st)
            .is_some());
        assert!(m.servers[&1].connected && m.servers[&1].disconnected_at.is_none());
        // Silent past the grace: its copy stops counting.
        m.tick(&st, t0 + Duration::from_secs(100), g, long, &quiet);
        assert!(!m.servers[&1].counted);
        assert_eq!(m.counts(&st).missing, 1);
        assert!(m.valid(1, 1).is_empty());
        assert!(
            m.heartbeat(&back, t0 + Duration::from_secs(100), &st)
                .is_none(),
            "must register again"
        );
    }

    #[test]
    fn sessions_and_replications_avoid_a_disconnected_holder_unless_none_is_connected() {
        let st = state_with_chunk();
        let mut m = ChunkMap::default();
        let t0 = Instant::now();
        m.register(&reg(1, "a", 100, &[(1, 1)]), t0, &st);
        m.register(&reg(2, "b", 50, &[(1, 1)]), t0, &st);
        let g = grace(Duration::from_secs(60));
        let quiet = Policy {
            per_tick: 0,
            ..Policy::default()
        };
        // Server 1 (more free space) goes silent; 2 keeps sending heartbeats.
        let later = t0 + Duration::from_secs(4);
        let alive = pb::ChunkserverHeartbeatRequest {
            server_id: 2,
            ..Default::default()
        };
        assert!(m.heartbeat(&alive, later, &st).is_some());
        m.tick(&st, later, g, Duration::from_secs(3600), &quiet);
        assert!(!m.servers[&1].connected && m.servers[&2].connected);
        // Both copies count; readers get the connected one first.
        let valid: Vec<u64> = m.valid(1, 1).iter().map(|s| s.id).collect();
        assert_eq!(valid, [2, 1]);
        assert_eq!(m.holders(1, 1), [2]);
        // Server 2 goes silent too: every counted copy is tried.
        m.tick(
            &st,
            later + Duration::from_secs(4),
            g,
            Duration::from_secs(3600),
            &quiet,
        );
        let mut all = m.holders(1, 1);
        all.sort_unstable();
        assert_eq!(all, [1, 2]);
    }

    fn hb(
        m: &mut ChunkMap,
        st: &State,
        id: u64,
        changed: &[(u64, u64)],
        now: Instant,
    ) -> Vec<Command> {
        let req = pb::ChunkserverHeartbeatRequest {
            server_id: id,
            changed: changed
                .iter()
                .map(|(c, v)| pb::ChunkInfo {
                    chunk_id: *c,
                    version: *v,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        m.heartbeat(&req, now, st)
            .expect("heartbeat accepted")
            .0
            .into_iter()
            .filter_map(|c| c.command)
            .collect()
    }

    fn tick(m: &mut ChunkMap, st: &State, now: Instant) {
        let long = Duration::from_secs(3600);
        m.tick(st, now, grace(long), long, &Policy::default());
    }

    /// Disconnected after 3 s, copies counted for `grace`.
    fn grace(grace: Duration) -> Liveness {
        Liveness {
            disconnect: Duration::from_secs(3),
            grace,
        }
    }

    fn with_usage(id: u64, used_pct: u64, chunks: &[(u64, u64)]) -> pb::RegisterChunkserverRequest {
        let mut r = reg(id, &format!("l{id}"), 100 - used_pct, chunks);
        r.disks[0].total_bytes = 100;
        r.disks[0].used_bytes = used_pct;
        r
    }

    #[test]
    fn drain_copies_off_then_deletes_and_is_safe() {
        let st = state_with_chunk();
        let mut m = ChunkMap::default();
        let t = Instant::now();
        m.register(&with_usage(1, 10, &[(1, 1)]), t, &st);
        m.register(&with_usage(2, 50, &[(1, 1)]), t, &st);
        m.register(&with_usage(3, 50, &[]), t, &st);
        tick(&mut m, &st, t);
        assert_eq!(m.counts(&st).at, 1);
        assert!(m.set_draining(1, true));
        assert!(!m.set_draining(99, true));
        assert_eq!(m.counts(&st).under, 1);
        assert_eq!(m.chunks_to_move(&st, 1), 1);
        tick(&mut m, &st, t);
        let cmds = hb(&mut m, &st, 3, &[], t);
        match cmds.as_slice() {
            [Command::Replicate(r)] => {
                assert_eq!(r.chunk_id, 1);
                // The copy on the server not being drained is read first.
                assert_eq!(r.sources[0].server_id, 2);
            }
            other => panic!("expected one replication to server 3, got {other:?}"),
        }
        // New chunks never go to a draining server.
        assert!(!m.place(3, &[]).contains(&1));
        hb(&mut m, &st, 3, &[(1, 1)], t);
        assert_eq!(m.chunks_to_move(&st, 1), 0);
        tick(&mut m, &st, t);
        let cmds = hb(&mut m, &st, 1, &[], t);
        assert!(
            matches!(cmds.as_slice(), [Command::Delete(d)] if d.chunk_id == 1),
            "{cmds:?}"
        );
        assert_eq!(m.counts(&st).at, 1);
        assert!(m.servers[&1].held.is_empty());
    }

    #[test]
    fn a_write_waits_for_a_replication_in_flight_then_gives_it_up() {
        let st = state_with_chunk();
        let mut m = ChunkMap::default();
        let t = Instant::now();
        m.register(&reg(1, "a", 100, &[(1, 1)]), t, &st);
        m.register(&reg(2, "b", 100, &[]), t, &st);
        assert_eq!(m.replication_blocking_write(1, t), None);
        tick(&mut m, &st, t);
        let cmds = hb(&mut m, &st, 2, &[], t);
        assert!(
            matches!(cmds.as_slice(), [Command::Replicate(r)] if r.chunk_id == 1),
            "{cmds:?}"
        );
        // While the copy is made, a write must wait: it would make it stale.
        let later = t + Duration::from_secs(3);
        assert_eq!(
            m.replication_blocking_write(1, later),
            Some((2, Duration::from_secs(3)))
        );
        // Other chunks are not held up.
        assert_eq!(m.replication_blocking_write(7, later), None);
        // Once the copy is reported, the write goes ahead on both copies.
        hb(&mut m, &st, 2, &[(1, 1)], later);
        assert_eq!(m.replication_blocking_write(1, later), None);
        assert_eq!(m.valid_count(1, 1), 2);

        // A replication that never reports keeps a writer waiting only so long.
        let mut m = ChunkMap::default();
        m.register(&reg(1, "a", 100, &[(1, 1)]), t, &st);
        m.register(&reg(2, "b", 100, &[]), t, &st);
        tick(&mut m, &st, t);
        assert!(!hb(&mut m, &st, 2, &[], t).is_empty());
        let too_late = t + WRITE_WAITS_FOR_REPLICATION;
        assert_eq!(m.replication_blocking_write(1, too_late), None);
        assert_eq!(m.replications_in_flight(), 0);
    }

    #[test]
    fn a_copy_that_failed_a_write_is_never_counted_again() {
        let st = state_with_chunk();
        let mut m = ChunkMap::default();
        let t = Instant::now();
        m.register(&reg(1, "a", 100, &[(1, 1)]), t, &st);
        m.register(&reg(2, "b", 100, &[(1, 1)]), t, &st);
        m.register(&reg(3, "c", 50, &[]), t, &st);
        // Server 2 failed during a session at the master's version 1.
        m.end_write(1, 1, &[2]);
        assert_eq!(m.valid_count(1, 1), 1);
        assert!(m.servers[&2].suspect);
        assert!(!m.place(3, &[]).contains(&2));
        // It comes back claiming version 1: deleted, not counted.
        m.register(&reg(2, "b", 100, &[(1, 1)]), t, &st);
        assert_eq!(m.valid_count(1, 1), 1);
        let cmds = hb(&mut m, &st, 2, &[], t);
        assert!(cmds
            .iter()
            .all(|c| matches!(c, Command::Delete(d) if d.chunk_id == 1)));
        assert!(!cmds.is_empty());
        // A heartbeat clears the suspicion; a replication to it is trusted.
        tick(&mut m, &st, t);
        let mut to = None;
        for sid in [2, 3] {
            if hb(&mut m, &st, sid, &[], t)
                .iter()
                .any(|c| matches!(c, Command::Replicate(_)))
            {
                to = Some(sid);
            }
        }
        let to = to.expect("a replication was planned");
        hb(&mut m, &st, to, &[(1, 1)], t);
        assert_eq!(m.valid_count(1, 1), 2);
    }

    #[test]
    fn rebalancing_moves_a_copy_from_the_fullest_server() {
        let st = state_with_chunk();
        let mut m = ChunkMap::default();
        let t = Instant::now();
        m.register(&with_usage(1, 90, &[(1, 1)]), t, &st);
        m.register(&with_usage(2, 50, &[(1, 1)]), t, &st);
        m.register(&with_usage(3, 10, &[]), t, &st);
        tick(&mut m, &st, t);
        let cmds = hb(&mut m, &st, 3, &[], t);
        assert!(
            matches!(cmds.as_slice(), [Command::Replicate(r)] if r.chunk_id == 1),
            "{cmds:?}"
        );
        hb(&mut m, &st, 3, &[(1, 1)], t);
        tick(&mut m, &st, t);
        let cmds = hb(&mut m, &st, 1, &[], t);
        assert!(
            matches!(cmds.as_slice(), [Command::Delete(d)] if d.chunk_id == 1),
            "the surplus copy goes from the fullest server: {cmds:?}"
        );
        // Below the threshold nothing moves.
        let mut m = ChunkMap::default();
        m.register(&with_usage(1, 55, &[(1, 1)]), t, &st);
        m.register(&with_usage(2, 50, &[(1, 1)]), t, &st);
        m.register(&with_usage(3, 50, &[]), t, &st);
        tick(&mut m, &st, t);
        assert!(hb(&mut m, &st, 3, &[], t).is_empty());
    }

    #[test]
    fn a_delayed_report_of_an_older_version_is_not_adopted() {
        let mut st = state_with_chunk();
        let mut m = ChunkMap::default();
        let t = Instant::now();
        m.register(&reg(1, "a", 100, &[(1, 1)]), t, &st);
        m.register(&reg(2, "b", 100, &[(1, 1)]), t, &st);
        run(
            &mut st,
            Op::WriteChunk(pb::WriteChunkOp {
                inode: 2,
                chunk_index: 0,
                chunk_id: 1,
                version: 2,
                created: false,
                ..Default::default()
            }),
        );
        m.start_write(1, 2, &[1, 2], t);
        // A heartbeat carrying the version from before the session arrives late.
        hb(&mut m, &st, 1, &[(1, 1)], t);
        m.end_write(1, 2, &[]);
        let long = Duration::from_secs(3600);
        let adopt = m.tick(&st, t, grace(long), long, &Policy::default());
        assert!(adopt.is_empty(), "adopted {adopt:?}");
        assert_eq!(m.valid_count(1, 2), 2);
    }
}
