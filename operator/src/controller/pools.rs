//! Chunkserver pools: how many pods each StatefulSet keeps while a
//! scale-down drains its highest ordinals, and which pod a rolling upgrade
//! replaces next. Pure functions of the spec, the live objects and the
//! master's status.

use alces_proto::pb;

use crate::builders::names;
use crate::crd::ChunkserverPool;

/// What to do with one pool.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolPlan {
    /// Replicas the StatefulSet keeps now.
    pub replicas: i32,
    /// Pods being drained before removal.
    pub draining: Vec<String>,
    /// Servers to drain (true) or undrain (false) through the master.
    pub drains: Vec<(u64, bool, String)>,
    /// Why the scale-down cannot go on (a `ScaleDownBlocked` condition).
    pub blocked: Option<String>,
    /// The drain finished: the StatefulSet shrinks now.
    pub shrinks: bool,
}

/// The master's record of the chunkserver of pod `pod` (matched by the
/// address it advertises: `<pod>.<headless service>...`).
pub fn server_of<'a>(ms: &'a pb::ClusterStatus, pod: &str) -> Option<&'a pb::ChunkserverStatus> {
    let prefix = format!("{pod}.");
    ms.chunkservers
        .iter()
        .filter(|s| s.address.starts_with(&prefix))
        .max_by_key(|s| s.connected)
}

/// Plans a pool. `live` is the StatefulSet's current replicas (None before
/// it exists); `remaining` is the number of chunkservers all pools keep once
/// every scale-down is done; `ms` the master's status if it answered.
pub fn plan(
    cluster: &str,
    pool: &ChunkserverPool,
    live: Option<i32>,
    remaining: i32,
    ms: Option<&pb::ClusterStatus>,
) -> PoolPlan {
    let sts = names::pool(cluster, &pool.name);
    let want = pool.replicas.max(0);
    let cur = live.unwrap_or(want);
    let mut plan = PoolPlan {
        replicas: want,
        ..Default::default()
    };
    if want >= cur {
        // Scaling up (or back up during a drain): the pods kept stop draining.
        if let Some(ms) = ms {
            for i in 0..want {
                let pod = names::pod(&sts, i);
                if let Some(s) = server_of(ms, &pod) {
                    if s.draining {
                        plan.drains.push((s.server_id, false, pod));
                    }
                }
            }
        }
        return plan;
    }
    plan.replicas = cur;
    let Some(ms) = ms else {
        plan.blocked = Some(format!(
            "pool {}: scaling from {cur} to {want} waits for the master to answer (its pods must be drained first)",
            pool.name
        ));
        return plan;
    };
    let goal = ms
        .chunk_counts
        .map_or(0, |c| c.max_goal)
        .max(ms.default_goal) as i32;
    if remaining < goal {
        plan.blocked = Some(format!(
            "pool {}: scaling to {want} would leave {remaining} chunkservers but goal {goal} is in use; lower the goals first (alces goal set) or keep at least {goal} chunkservers",
            pool.name
        ));
        return plan;
    }
    let mut done = true;
    for i in want..cur {
        let pod = names::pod(&sts, i);
        // A pod whose chunkserver never registered holds no chunk.
        if let Some(s) = server_of(ms, &pod) {
            if !s.draining {
                plan.drains.push((s.server_id, true, pod.clone()));
                done = false;
            } else if !s.safe_to_remove {
                done = false;
            }
            plan.draining.push(pod);
        }
    }
    let missing = ms.chunk_counts.map_or(0, |c| c.missing);
    if done && missing == 0 {
        plan.replicas = want;
        plan.shrinks = true;
        plan.draining.clear();
    }
    plan
}

/// Ready chunkservers of a pool: its pods Kubernetes reports ready
/// (`sts_ready`) and, when the master answered, no more than the pods whose
/// chunkserver the master shows connected. The master sees a dead chunkserver
/// within seconds (its heartbeats stop), before a readiness probe fails.
pub fn ready(
    cluster: &str,
    pool: &ChunkserverPool,
    pods: i32,
    sts_ready: i32,
    ms: Option<&pb::ClusterStatus>,
) -> i32 {
    let Some(ms) = ms else {
        return sts_ready;
    };
    let sts = names::pool(cluster, &pool.name);
    let connected = (0..pods.max(0))
        .filter(|i| server_of(ms, &names::pod(&sts, *i)).is_some_and(|s| s.connected))
        .count() as i32;
    sts_ready.min(connected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Disk;

    fn pool(replicas: i32) -> ChunkserverPool {
        ChunkserverPool {
            name: "a".into(),
            replicas,
            disks: vec![Disk {
                name: "d".into(),
                host_path: Some("/x".into()),
                volume_claim: None,
            }],
            failure_domain: None,
            resources: None,
            placement: Default::default(),
        }
    }

    fn cs(ord: i32, id: u64, draining: bool, safe: bool) -> pb::ChunkserverStatus {
        pb::ChunkserverStatus {
            server_id: id,
            address: format!("c-cs-a-{ord}.c-chunkservers.ns.svc:9422"),
            connected: true,
            draining,
            safe_to_remove: safe,
            ..Default::default()
        }
    }

    fn status(servers: Vec<pb::ChunkserverStatus>, max_goal: u32) -> pb::ClusterStatus {
        pb::ClusterStatus {
            chunkservers: servers,
            default_goal: 2,
            chunk_counts: Some(pb::ChunkCounts {
                max_goal,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn scale_up_is_immediate() {
        let p = plan("c", &pool(5), Some(3), 5, None);
        assert_eq!((p.replicas, p.blocked), (5, None));
    }

    #[test]
    fn scale_down_drains_the_highest_ordinals_then_shrinks() {
        let servers = (0..5)
            .map(|i| cs(i, 100 + i as u64, false, false))
            .collect();
        let p = plan("c", &pool(3), Some(5), 3, Some(&status(servers, 2)));
        assert_eq!(p.replicas, 5, "kept until drained");
        assert_eq!(
            p.drains,
            [
                (103, true, "c-cs-a-3".to_string()),
                (104, true, "c-cs-a-4".to_string())
            ]
        );
        assert_eq!(p.draining, ["c-cs-a-3", "c-cs-a-4"]);
        // Draining, one still has chunks to move.
        let mut servers: Vec<_> = (0..3)
            .map(|i| cs(i, 100 + i as u64, false, false))
            .collect();
        servers.push(cs(3, 103, true, true));
        servers.push(cs(4, 104, true, false));
        let p = plan("c", &pool(3), Some(5), 3, Some(&status(servers.clone(), 2)));
        assert_eq!((p.replicas, p.drains.len(), p.shrinks), (5, 0, false));
        // Both safe: shrink.
        servers[4].safe_to_remove = true;
        let p = plan("c", &pool(3), Some(5), 3, Some(&status(servers, 2)));
        assert_eq!((p.replicas, p.shrinks), (3, true));
    }

    #[test]
    fn scale_down_below_the_largest_goal_is_refused() {
        let servers = (0..3)
            .map(|i| cs(i, 100 + i as u64, false, false))
            .collect();
        let p = plan("c", &pool(1), Some(3), 1, Some(&status(servers, 3)));
        assert_eq!(p.replicas, 3);
        assert!(
            p.blocked.as_deref().unwrap_or("").contains("goal 3"),
            "{p:?}"
        );
        assert!(p.drains.is_empty());
    }

    #[test]
    fn scaling_back_up_ends_the_drains() {
        let servers = vec![cs(0, 1, false, false), cs(1, 2, true, false)];
        let p = plan("c", &pool(2), Some(2), 2, Some(&status(servers, 2)));
        assert_eq!(p.drains, [(2, false, "c-cs-a-1".to_string())]);
    }

    #[test]
    fn ready_counts_only_chunkservers_the_master_shows_connected() {
        let mut servers: Vec<_> = (0..3)
            .map(|i| cs(i, 100 + i as u64, false, false))
            .collect();
        assert_eq!(
            ready("c", &pool(3), 3, 3, Some(&status(servers.clone(), 2))),
            3
        );
        // SIGKILLed: the pod still looks ready, the master already knows.
        servers[1].connected = false;
        assert_eq!(
            ready("c", &pool(3), 3, 3, Some(&status(servers.clone(), 2))),
            2
        );
        // Kubernetes knows first (or the master never saw the pod).
        assert_eq!(ready("c", &pool(3), 3, 1, Some(&status(servers, 2))), 1);
        assert_eq!(
            ready(
                "c",
                &pool(4),
                4,
                4,
                Some(&status(vec![cs(0, 1, false, false)], 2))
            ),
            1
        );
        // No master answer: Kubernetes' count.
        assert_eq!(ready("c", &pool(3), 3, 3, None), 3);
    }

    #[test]
    fn scale_down_waits_for_the_master() {
        let p = plan("c", &pool(1), Some(3), 1, None);
        assert_eq!(p.replicas, 3);
        assert!(p.blocked.is_some());
    }
}
