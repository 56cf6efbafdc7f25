//! The workspace's crates depend on each other only as the code map of the
//! root `ARCHITECTURE.md` says: `proto` and `telemetry` at the bottom, the
//! daemons (`master`, `chunkserver`, `client`) never on each other, the
//! operator on no data-path crate. Read from `cargo metadata`, so a new
//! dependency between Alces crates fails here until the table below and the
//! code map are changed together.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Per crate: the Alces crates it may use as a normal (build) dependency, then
/// as a dev-dependency (tests and benchmarks only).
const ALLOWED: &[(&str, &[&str], &[&str])] = &[
    ("alces-proto", &[], &[]),
    ("alces-telemetry", &[], &[]),
    ("alces-master", &["alces-proto", "alces-telemetry"], &[]),
    (
        "alces-chunkserver",
        &["alces-proto", "alces-telemetry"],
        &[],
    ),
    ("alces-client", &["alces-proto", "alces-telemetry"], &[]),
    ("alces-cli", &["alces-proto"], &[]),
    (
        "alces-csi",
        &["alces-client", "alces-proto", "alces-telemetry"],
        &[],
    ),
    (
        "alces-operator",
        &["alces-proto", "alces-telemetry"],
        // proto again with its `certgen` feature: certificates for the TLS tests.
        &["alces-master", "alces-proto"],
    ),
    (
        "alces-e2e",
        &["alces-cli", "alces-client", "alces-csi", "alces-proto"],
        &["alces-operator"],
    ),
    (
        "alces-bench",
        &["alces-e2e", "alces-operator", "alces-proto"],
        &["alces-chunkserver", "alces-master"],
    ),
];

/// (crate, dependency kind) -> the Alces crates it depends on, from `cargo metadata`.
fn workspace_edges() -> BTreeMap<(String, &'static str), BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut edges = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().expect("package name").to_string();
        for kind in ["normal", "dev"] {
            edges.insert((name.clone(), kind), BTreeSet::new());
        }
        for d in p["dependencies"].as_array().expect("dependencies") {
            let dep = d["name"].as_str().expect("dependency name");
            if !dep.starts_with("alces-") {
                continue;
            }
            let kind = match d["kind"].as_str() {
                None => "normal",
                Some("dev") => "dev",
                Some(_) => "normal", // build-dependencies count as dependencies
            };
            edges
                .get_mut(&(name.clone(), kind))
                .expect("inserted above")
                .insert(dep.to_string());
        }
    }
    edges
}

#[test]
fn crates_depend_only_as_the_code_map_says() {
    let edges = workspace_edges();
    let crates: BTreeSet<&str> = edges.keys().map(|(c, _)| c.as_str()).collect();
    let listed: BTreeSet<&str> = ALLOWED.iter().map(|(c, _, _)| *c).collect();
    assert_eq!(
        crates, listed,
        "the workspace's crates and the ones this test (and ARCHITECTURE.md's code map) lists differ"
    );
    let mut wrong = Vec::new();
    for (name, normal, dev) in ALLOWED {
        for (kind, allowed) in [("normal", *normal), ("dev", *dev)] {
            let have = &edges[&(name.to_string(), kind)];
            let allowed: BTreeSet<String> = allowed.iter().map(|s| s.to_string()).collect();
            if *have != allowed {
                wrong.push(format!(
                    "{name} ({kind} dependencies): has {have:?}, the code map allows {allowed:?}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies between Alces crates changed; update ARCHITECTURE.md's code map and this table together:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_daemons_never_depend_on_each_other() {
    let edges = workspace_edges();
    let daemons = ["alces-master", "alces-chunkserver", "alces-client"];
    for d in daemons {
        for kind in ["normal", "dev"] {
            for other in daemons {
                assert!(
                    !edges[&(d.to_string(), kind)].contains(other),
                    "{d} depends on {other} ({kind}): they talk over gRPC, never by importing each other"
                );
            }
        }
    }
}
