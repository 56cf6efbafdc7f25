//! Checks of an `AlcesCluster` spec that the schema cannot express (or that a
//! 1.20 API server, which ignores CEL rules, does not enforce). Each problem
//! names the field; the controller reports them as a `Degraded` condition
//! with reason `InvalidSpec` and applies nothing until they are fixed.

use std::collections::BTreeSet;

use crate::crd::{AlcesClusterSpec, Disk};

/// Longest cluster name: pod names (`<name>-cs-<pool>-<ordinal>`) and their
/// revision labels must stay within 63 characters.
pub const MAX_NAME: usize = 24;

/// A problem with a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// JSON path of the field, e.g. `spec.chunkservers.pools[1].name`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn disk_problems(field: &str, d: &Disk, out: &mut Vec<Problem>) {
    match (&d.host_path, &d.volume_claim) {
        (Some(_), Some(_)) | (None, None) => out.push(Problem {
            field: field.into(),
            message: "give exactly one of hostPath and volumeClaim".into(),
        }),
        (Some(h), None) => {
            if !h.starts_with('/') || h.split('/').any(|c| c == "..") || h.contains('\0') {
                out.push(Problem {
                    field: format!("{field}.hostPath"),
                    message: format!("'{h}' must be an absolute path without '..'"),
                });
            }
        }
        (None, Some(_)) => {}
    }
}

fn push(out: &mut Vec<Problem>, field: &str, message: String) {
    out.push(Problem {
        field: field.into(),
        message,
    });
}

/// Everything wrong with `spec` of the cluster `name` (empty when valid).
pub fn check(name: &str, spec: &AlcesClusterSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    let o = &mut out;
    if name.len() > MAX_NAME {
        push(
            o,
            "metadata.name",
            format!(
                "'{name}' is {} characters; at most {MAX_NAME} (pod names are built from it)",
                name.len()
            ),
        );
    }
    if spec.image.trim().is_empty() {
        push(o, "spec.image", "name the container image of Alces".into());
    }
    if !(1..=9).contains(&spec.default_goal) {
        push(
            o,
            "spec.defaultGoal",
            format!(
                "{} is not a goal: copies per chunk are 1 to 9",
                spec.default_goal
            ),
        );
    }
    if !(0..=8).contains(&spec.metaloggers.replicas) {
        push(
            o,
            "spec.metaloggers.replicas",
            format!(
                "{} is out of range 0-8 (the metadata StatefulSet runs 1 + replicas pods)",
                spec.metaloggers.replicas
            ),
        );
    }
    let k = spec.effective_sync_metaloggers();
    if k as i32 > spec.metaloggers.replicas.max(0) {
        push(
            o,
            "spec.syncMetaloggers",
            format!(
                "{k} sync metaloggers but only {} metaloggers: every mutation would wait for metaloggers that do not exist",
                spec.metaloggers.replicas
            ),
        );
    }
    if let Some(cs) = &spec.master.tuning.chunk_size {
        if alces_proto::geometry::parse_size(cs)
            .and_then(alces_proto::geometry::validate_chunk_size)
            .is_err()
        {
            push(
                o,
                "spec.master.tuning.chunkSize",
                format!("'{cs}' is not a chunk size (1MiB to 64MiB, a multiple of 64KiB)"),
            );
        }
    }
    if let Some(d) = &spec.master.storage {
        let disk = Disk {
            name: "metadata".into(),
            host_path: d.host_path.clone(),
            volume_claim: d.volume_claim.clone(),
        };
        disk_problems("spec.master.storage", &disk, o);
    }
    if let Some(r) = &spec.secret_ref {
        if r.name.is_empty() {
            push(
                o,
                "spec.secretRef.name",
                "name the Secret holding the cluster secret".into(),
            );
        }
    }
    if let Some(t) = &spec.tls {
        let secret_name = |s: &str| !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label);
        if !secret_name(&t.secret_name) {
            push(
                o,
                "spec.tls.secretName",
                format!(
                    "'{}' is not a Secret name: give the Secret holding tls.crt, tls.key and ca.crt",
                    t.secret_name
                ),
            );
        }
        if let Some(n) = t.client_secret_name.as_deref().filter(|n| !secret_name(n)) {
            push(
                o,
                "spec.tls.clientSecretName",
                format!("'{n}' is not a Secret name: give the Secret holding the operator's tls.crt and tls.key, or leave it out"),
            );
        }
        if let Some(n) = &t.server_name {
            let lower = n.to_ascii_lowercase();
            if n.len() > 253 || lower.is_empty() || !lower.split('.').all(dns_label) {
                push(
                    o,
                    "spec.tls.serverName",
                    format!("'{n}' is not a DNS name: give the name every server certificate carries, or leave it out"),
                );
            }
        }
    }
    let pools = &spec.chunkservers.pools;
    if pools.is_empty() {
        push(
            o,
            "spec.chunkservers.pools",
            "at least one chunkserver pool is needed".into(),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, pool) in pools.iter().enumerate() {
        let f = format!("spec.chunkservers.pools[{i}]");
        if !dns_label(&pool.name) || pool.name.len() > 20 {
            push(
                o,
                &format!("{f}.name"),
                format!(
                    "'{}' must be a lowercase DNS label of at most 20 characters",
                    pool.name
                ),
            );
        }
        if !seen.insert(pool.name.as_str()) {
            push(
                o,
                &format!("{f}.name"),
                format!(
                    "pool name '{}' is used twice; pool names must be unique",
                    pool.name
                ),
            );
        }
        if pool.replicas < 0 {
            push(
                o,
                &format!("{f}.replicas"),
                format!("{} is negative", pool.replicas),
            );
        }
        if pool.disks.is_empty() {
            push(
                o,
                &format!("{f}.disks"),
                "a chunkserver needs at least one disk".into(),
            );
        }
        let mut names = BTreeSet::new();
        for (j, d) in pool.disks.iter().enumerate() {
            let df = format!("{f}.disks[{j}]");
            if !dns_label(&d.name) {
                push(
                    o,
                    &format!("{df}.name"),
                    format!("'{}' must be a lowercase DNS label", d.name),
                );
            }
            if !names.insert(d.name.as_str()) {
                push(
                    o,
                    &format!("{df}.name"),
                    format!("disk name '{}' is used twice in this pool", d.name),
                );
            }
            disk_problems(&df, d, o);
        }
    }
    out
}

/// Problems of a change from `old` to `new` (what CEL transition rules say,
/// checked here too for API servers that ignore them): the disk layout of a
/// pool and the metadata storage never change.
pub fn check_change(old: &AlcesClusterSpec, new: &AlcesClusterSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    if old.master.storage != new.master.storage {
        push(
            &mut out,
            "spec.master.storage",
            "the metadata disks cannot change: they hold the filesystem's metadata; put the previous value back".into(),
        );
    }
    for (i, p) in new.chunkservers.pools.iter().enumerate() {
        if let Some(o) = old.chunkservers.pools.iter().find(|o| o.name == p.name) {
            if o.disks != p.disks {
                push(
                    &mut out,
                    &format!("spec.chunkservers.pools[{i}].disks"),
                    format!(
                        "the disk layout of pool '{}' cannot change (a chunkserver's identity and chunks live on its disks); put the previous layout back, and add a new pool instead",
                        p.name
                    ),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(y: &str) -> AlcesClusterSpec {
        serde_saphyr::from_str(y).expect("spec parses")
    }

    const OK: &str = "image: a\nchunkservers:\n  pools:\n  - name: p\n    replicas: 3\n    disks: [{name: d, hostPath: /x}]\n";

    fn fields(name: &str, s: &AlcesClusterSpec) -> Vec<String> {
        check(name, s).into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn a_good_spec_has_no_problem() {
        assert_eq!(check("demo", &spec(OK)), []);
    }

    #[test]
    fn bad_tls_names_are_named() {
        let good = format!("{OK}tls:\n  secretName: demo-tls\n  serverName: alces.example.org\n");
        assert_eq!(check("demo", &spec(&good)), []);
        let s = spec(&format!(
            "{OK}tls:\n  secretName: 'Bad/Name'\n  clientSecretName: '..'\n  serverName: 'a b'\n"
        ));
        assert_eq!(
            fields("demo", &s),
            [
                "spec.tls.secretName",
                "spec.tls.clientSecretName",
                "spec.tls.serverName"
            ]
        );
        let s = spec(&format!("{OK}tls:\n  secretName: ''\n"));
        assert_eq!(fields("demo", &s), ["spec.tls.secretName"]);
        // Mutual TLS unless asked otherwise.
        assert!(spec(&good).tls.unwrap().client_auth);
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut s = spec(OK);
        s.default_goal = 0;
        assert_eq!(fields("demo", &s), ["spec.defaultGoal"]);
        let mut s = spec(OK);
        s.default_goal = 10;
        assert_eq!(fields("demo", &s), ["spec.defaultGoal"]);
        let mut s = spec(OK);
        s.metaloggers.replicas = -1;
        assert!(fields("demo", &s).contains(&"spec.metaloggers.replicas".to_string()));
        let mut s = spec(OK);
        s.sync_metaloggers = Some(3);
        assert_eq!(fields("demo", &s), ["spec.syncMetaloggers"]);
        let mut s = spec(OK);
        s.image = " ".into();
        assert_eq!(fields("demo", &s), ["spec.image"]);
        assert_eq!(fields(&"x".repeat(40), &spec(OK)), ["metadata.name"]);
        let mut s = spec(OK);
        s.master.tuning.chunk_size = Some("3MiB1".into());
        assert_eq!(fields("demo", &s), ["spec.master.tuning.chunkSize"]);
    }

    #[test]
    fn pools_and_disks_are_checked() {
        let mut s = spec(OK);
        let p = s.chunkservers.pools[0].clone();
        s.chunkservers.pools.push(p);
        assert_eq!(fields("demo", &s), ["spec.chunkservers.pools[1].name"]);
        let mut s = spec(OK);
        s.chunkservers.pools.clear();
        assert_eq!(fields("demo", &s), ["spec.chunkservers.pools"]);
        for bad in ["../etc", "/a/../b", "rel"] {
            let mut s = spec(OK);
            s.chunkservers.pools[0].disks[0].host_path = Some(bad.into());
            assert_eq!(
                fields("demo", &s),
                ["spec.chunkservers.pools[0].disks[0].hostPath"],
                "{bad}"
            );
        }
        let mut s = spec(OK);
        s.chunkservers.pools[0].disks[0].host_path = None;
        assert_eq!(fields("demo", &s), ["spec.chunkservers.pools[0].disks[0]"]);
        let mut s = spec(OK);
        s.chunkservers.pools[0].name = "Bad_Name".into();
        assert_eq!(fields("demo", &s), ["spec.chunkservers.pools[0].name"]);
        let mut s = spec(OK);
        s.chunkservers.pools[0].disks.clear();
        assert_eq!(fields("demo", &s), ["spec.chunkservers.pools[0].disks"]);
    }

    #[test]
    fn a_changed_disk_layout_is_refused() {
        let old = spec(OK);
        let mut new = old.clone();
        new.chunkservers.pools[0].disks[0].host_path = Some("/y".into());
        let p = check_change(&old, &new);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "spec.chunkservers.pools[0].disks");
        assert!(check_change(&old, &old).is_empty());
    }

    #[test]
    fn unknown_and_mistyped_fields_do_not_parse() {
        // The API server prunes unknown fields; what reaches the operator
        // through a client with the wrong types fails to parse with the field named.
        let e = serde_saphyr::from_str::<AlcesClusterSpec>(
            "image: a\ndefaultGoal: three\nchunkservers: {pools: []}\n",
        )
        .expect_err("a string goal");
        assert!(
            e.to_string().contains("defaultGoal") || e.to_string().contains("invalid"),
            "{e}"
        );
    }
}
