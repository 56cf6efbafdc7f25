//! The Kubernetes manifests against the real binaries, with no kubelet: every
//! container the operator builds (metadata pods, chunkserver pools) and every
//! container the Helm chart renders for the Alces image (operator, CSI
//! controller, CSI node) is checked against the image's binaries, and the
//! daemons are run the way a kubelet runs them.
//!
//! Checked without running: the command is one of the image's binaries; every
//! environment variable set is one the binary reads (its `--help` names it);
//! probes and Service ports reach ports the arguments listen on; the paths the
//! arguments and environment name are inside volume mounts; Service selectors
//! select the pods (the master Service the active master's pod only); the
//! arguments and environment parse (`<command> <args> --help` inside the image).
//!
//! Run like a kubelet (`image/build-oci --rootfs-only` of the debug binaries):
//! each pod gets its own network namespace on a bridge, its own mount and UTS
//! namespaces, the image as its root filesystem (read-only when the container
//! says so), `/proc`, a minimal `/dev`, its volumes bind-mounted where the
//! manifest says (claims as root-owned directories with `lost+found`, hostPath
//! directories created by root with mode 0755, secrets with their mode, `fsGroup`
//! applied as the kubelet applies it), the user, group and supplementary group
//! of its security context, the environment the kubelet builds (`envFrom`, field
//! references, `$(VAR)` expansion), its init containers run to completion first
//! (a root one with only the capabilities it adds, and those `chroot` needs:
//! never DAC_OVERRIDE), and an `/etc/hosts` that resolves the pod
//! and Service names (a Service to the Ready pods its selector picks). The
//! metadata pods start, the operator's bootstrap (`Promote{bootstrap, epoch 1}`)
//! makes ordinal 0 master, the chunkservers register through the master Service,
//! every probe answers 200, and the CSI plugins serve their socket where the
//! sidecars look for it. A volume is created, staged and published through the
//! CSI pods; then the node plugin pod is killed as a whole (every process whose
//! root is the pod's, its mount daemon included) while the chart's descriptor
//! holder pod runs and a process on the node appends and fsyncs through the
//! pod's target path: a new node plugin pod takes the connection from the
//! holder, and the writer sees no error and loses no fsynced line. The kubelet's
//! directory is a shared mount on the node and a `Bidirectional` volume mount
//! is an `rbind` in a pod that keeps the node's propagation, so mounts the plugin
//! makes reach the node and outlive its pod. Not emulated: capabilities of
//! containers (a root container keeps them here), seccomp, AppArmor, resource limits, pid
//! namespaces (every pod sees the host's pids, as `hostPID` gives).
//!
//! And the chart's operator container, started with the in-cluster
//! configuration a kubelet gives it, reconciles an AlcesCluster on the real
//! API server of `../shared/k8s` (RBAC enforced) with only the chart's RBAC.
//!
//! Needs root (namespaces, mounts, `chroot`), and `../shared/k8s` (or
//! `$ALCES_SHARED_DIR/k8s`) for the operator; otherwise they print `SKIPPED:`
//! (with `ALCES_REQUIRE_ENVTEST` set, as `e2e/test-all` sets it, a missing API
//! server fails).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alces_e2e::bin_dir;
use alces_operator::builders;
use alces_operator::crd::AlcesCluster;
use alces_proto::auth::ClientAuth;
use alces_proto::pb;
use serde_json::{json, Value};

const SECRET: &str = "k8s-manifests-secret";
const IMAGE: &str = "registry.example/alces:test";
/// The image's default user (`image/build-oci`).
const IMAGE_USER: u32 = 65532;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sh(cmd: &str) -> Result<String, String> {
    let out = Command::new("bash")
        .args(["-ec", cmd])
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{cmd}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

// ---------------------------------------------------------------------------
// The objects under test.

/// A cluster using every kind of disk: metadata on claims, a hostPath pool
/// and a pool with two claims per pod, tuning and an env override.
fn sample_cluster() -> AlcesCluster {
    serde_json::from_value(json!({
        "apiVersion": "alces.io/v1alpha1",
        "kind": "AlcesCluster",
        "metadata": { "name": "demo", "namespace": "storage", "uid": "u-1" },
        "spec": {
            "image": IMAGE,
            "metaloggers": { "replicas": 2 },
            "master": { "tuning": { "chunkserverTimeoutSeconds": 30, "replicationRate": 64,
                "chunkSize": "4MiB", "sessionTimeoutSeconds": 20, "snapshotIntervalSeconds": 600,
                "replicationsPerServer": 3, "rebalanceThresholdPercent": 15, "syncTimeoutMs": 4000 } },
            "chunkservers": { "pools": [
                { "name": "hdd", "replicas": 2, "failureDomain": "rack-a",
                  "disks": [ { "name": "d0", "hostPath": "/var/lib/alces/chunks" } ] },
                { "name": "ssd", "replicas": 1,
                  "disks": [ { "name": "d0", "volumeClaim": { "size": "1Gi" } },
                             { "name": "d1", "volumeClaim": { "size": "1Gi" } } ] }
            ] },
            "envOverrides": [ { "name": "RUST_LOG", "value": "info" } ]
        }
    }))
    .expect("sample AlcesCluster")
}

/// What the operator applies for the sample cluster, with `active` as master.
struct Operated {
    cluster: AlcesCluster,
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    services: Vec<Value>,
    statefulsets: Vec<Value>,
}

fn operated(active: &str) -> Operated {
    let c = sample_cluster();
    let mut config_maps = BTreeMap::new();
    config_maps.insert("demo-metadata".to_string(), builders::metadata_env(&c));
    config_maps.insert(
        "demo-chunkserver".to_string(),
        builders::chunkserver_env(&c),
    );
    let secret = builders::secret(&c, SECRET);
    let mut secrets = BTreeMap::new();
    secrets.insert(
        secret["metadata"]["name"].as_str().unwrap().to_string(),
        BTreeMap::from([(
            builders::SECRET_KEY.to_string(),
            secret["stringData"][builders::SECRET_KEY]
                .as_str()
                .unwrap()
                .to_string(),
        )]),
    );
    let services = vec![
        builders::headless_service(
            &c,
            "demo-metadata",
            builders::METADATA,
            builders::METALOGGER_PORT,
        ),
        builders::headless_service(
            &c,
            "demo-chunkservers",
            builders::CHUNKSERVER,
            builders::CHUNKSERVER_PORT,
        ),
        builders::master_service(&c, Some(active)),
    ];
    let mut statefulsets = vec![builders::metadata_statefulset(&c, "h1")];
    for p in &c.spec.chunkservers.pools {
        statefulsets.push(builders::pool_statefulset(&c, p, p.replicas, "h2"));
    }
    Operated {
        cluster: c,
        config_maps,
        secrets,
        services,
        statefulsets,
    }
}

/// The chart's objects for the Alces image (`helm template`).
fn chart_objects() -> Vec<Value> {
    chart_objects_with(&[])
}

/// The same with more `--set` values.
fn chart_objects_with(values: &[&str]) -> Vec<Value> {
    let (repo, tag) = IMAGE.rsplit_once(':').unwrap();
    let out = Command::new("helm")
        .current_dir(workspace())
        .args([
            "template",
            "alces",
            "charts/alces",
            "--namespace",
            "alces",
            "--set",
            &format!("image.repository={repo}"),
            "--set",
            &format!("image.tag={tag}"),
            "--set",
            "operator.watchNamespace=storage",
            "--set",
            "storageClass.cluster=storage/demo",
        ])
        .args(values.iter().flat_map(|v| ["--set", v]))
        .output()
        .expect("helm (e2e/chart-test installs it) runs");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
        .filter(|v| v.is_object())
        .collect()
}

/// Containers of `obj` (a workload) running the Alces image.
fn alces_containers(obj: &Value) -> Vec<Value> {
    obj["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["image"].as_str().is_some_and(|i| i.starts_with(IMAGE)))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// What a kubelet computes.

/// `$(VAR)` expansion as the kubelet does it (`$$` escapes; unknown names stay).
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let r = &rest[i..];
        if let Some(r2) = r.strip_prefix("$$") {
            out.push('$');
            rest = r2;
        } else if let (true, Some(end)) = (r.starts_with("$("), r.find(')')) {
            let name = &r[2..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&r[..=end]),
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &r[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Identity of a pod as field references see it.
struct PodInfo<'a> {
    name: &'a str,
    namespace: &'a str,
    node: &'a str,
    ip: &'a str,
}

/// The container's environment: `envFrom`, then `env` (expanded, field refs).
fn container_env(
    c: &Value,
    pod: &PodInfo,
    config_maps: &BTreeMap<String, BTreeMap<String, String>>,
    secrets: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let name = from["configMapRef"]["name"]
            .as_str()
            .ok_or_else(|| format!("envFrom {from}: only configMapRef is emulated"))?;
        let data = config_maps
            .get(name)
            .ok_or_else(|| format!("envFrom names ConfigMap {name}, which is not made"))?;
        env.extend(data.clone());
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().ok_or("env entry without a name")?;
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match f {
                "metadata.name" => pod.name.to_string(),
                "metadata.namespace" => pod.namespace.to_string(),
                "spec.nodeName" => pod.node.to_string(),
                "status.podIP" => pod.ip.to_string(),
                other => return Err(format!("env {name}: fieldRef {other} is not emulated")),
            }
        } else if let Some(k) = e["valueFrom"]["secretKeyRef"].as_object() {
            let (s, key) = (
                k["name"].as_str().unwrap_or(""),
                k["key"].as_str().unwrap_or(""),
            );
            secrets
                .get(s)
                .and_then(|d| d.get(key))
                .cloned()
                .ok_or_else(|| format!("env {name}: Secret {s} has no key {key}"))?
        } else {
            String::new()
        };
        env.insert(name.to_string(), value);
    }
    Ok(env)
}

// ---------------------------------------------------------------------------
// Static checks of one container.

/// The value of `--flag` in `args` (as `--flag v` or `--flag=v`), last wins.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let mut found = None;
    for (i, a) in args.iter().enumerate() {
        if a == name {
            found = args.get(i + 1).map(String::as_str);
        } else if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            found = Some(v);
        }
    }
    found
}

fn flags<'a>(args: &'a [String], name: &str) -> Vec<&'a str> {
    let mut v = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if a == name {
            v.extend(args.get(i + 1).map(String::as_str));
        } else if let Some(x) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            v.push(x);
        }
    }
    v
}

fn port_of(addr: &str) -> Option<i64> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// A container's port by number or name.
fn resolve_port(c: &Value, p: &Value) -> Option<i64> {
    if let Some(n) = p.as_i64() {
        return Some(n);
    }
    let name = p.as_str()?;
    c["ports"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == name)
        .and_then(|x| x["containerPort"].as_i64())
}

/// Every TCP port the container's process listens on, from its arguments and
/// environment (the flags the binaries have, with their defaults).
fn listen_ports(cmd: &str, args: &[String], env: &BTreeMap<String, String>) -> BTreeSet<i64> {
    let mut ports = BTreeSet::new();
    let pick = |f: &str, var: &str, default: Option<i64>| {
        flag(args, f)
            .map(str::to_string)
            .or_else(|| env.get(var).cloned())
            .and_then(|a| port_of(&a))
            .or(default)
    };
    let mut add = |p: Option<i64>| ports.extend(p);
    match cmd {
        "alces-metalogger" => {
            add(pick("--listen", "ALCES_METALOGGER_LISTEN", Some(9423)));
            add(pick("--http-listen", "ALCES_METALOGGER_HTTP_LISTEN", None));
            // Once promoted (the pod the master Service selects).
            add(pick(
                "--promote-listen",
                "ALCES_METALOGGER_PROMOTE_LISTEN",
                Some(9421),
            ));
            add(pick(
                "--promote-http-listen",
                "ALCES_METALOGGER_PROMOTE_HTTP_LISTEN",
                None,
            ));
        }
        "alces-master" => {
            add(pick("--listen", "ALCES_MASTER_LISTEN", Some(9421)));
            add(pick(
                "--http-listen",
                "ALCES_MASTER_HTTP_LISTEN",
                Some(9431),
            ));
        }
        "alces-chunkserver" => {
            add(pick("--listen", "ALCES_CHUNKSERVER_LISTEN", Some(9422)));
            add(pick(
                "--http-listen",
                "ALCES_CHUNKSERVER_HTTP_LISTEN",
                Some(9432),
            ));
        }
        "alces-operator" => add(pick(
            "--http-listen",
            "ALCES_OPERATOR_HTTP_LISTEN",
            Some(9440),
        )),
        "alces-csi" => add(pick("--http-listen", "ALCES_CSI_HTTP_LISTEN", None)),
        _ => {}
    }
    ports
}

/// The port of /healthz and /readyz: the HTTP listen flag of the binary.
fn http_port(cmd: &str, args: &[String], env: &BTreeMap<String, String>) -> Option<i64> {
    let (f, var, default) = match cmd {
        "alces-metalogger" => ("--http-listen", "ALCES_METALOGGER_HTTP_LISTEN", None),
        "alces-master" => ("--http-listen", "ALCES_MASTER_HTTP_LISTEN", Some(9431)),
        "alces-chunkserver" => ("--http-listen", "ALCES_CHUNKSERVER_HTTP_LISTEN", Some(9432)),
        "alces-operator" => ("--http-listen", "ALCES_OPERATOR_HTTP_LISTEN", Some(9440)),
        "alces-csi" => ("--http-listen", "ALCES_CSI_HTTP_LISTEN", None),
        _ => return None,
    };
    flag(args, f)
        .map(str::to_string)
        .or_else(|| env.get(var).cloned())
        .and_then(|a| port_of(&a))
        .or(default)
}

/// Paths a container's process writes or reads, from its arguments and
/// environment: (what names it, path, must be writable).
fn named_paths(args: &[String], env: &BTreeMap<String, String>) -> Vec<(String, String, bool)> {
    let mut v = Vec::new();
    for f in ["--data-dir", "--state-dir", "--kubelet-dir"] {
        for p in flags(args, f) {
            v.push((f.to_string(), p.to_string(), true));
        }
    }
    for f in ["--secret-file"] {
        for p in flags(args, f) {
            v.push((f.to_string(), p.to_string(), false));
        }
    }
    if let Some(e) = flag(args, "--endpoint") {
        if let Some(p) = e.strip_prefix("unix://") {
            v.push(("--endpoint".into(), p.to_string(), true));
        }
    }
    for (k, writable) in [
        ("ALCES_SECRET_FILE", false),
        ("ALCES_METALOGGER_DATA_DIR", true),
        ("ALCES_MASTER_DATA_DIR", true),
        ("ALCES_CSI_STATE_DIR", true),
    ] {
        if let Some(p) = env.get(k) {
            v.push((k.to_string(), p.clone(), writable));
        }
    }
    v
}

/// The mount covering `path` (the longest mountPath that is a prefix).
fn covering_mount<'a>(c: &'a Value, path: &str) -> Option<&'a Value> {
    c["volumeMounts"]
        .as_array()?
        .iter()
        .filter(|m| {
            let mp = m["mountPath"].as_str().unwrap_or("").trim_end_matches('/');
            path == mp || path.starts_with(&format!("{mp}/"))
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap_or("").len())
}

/// `--help` of `cmd` (with its subcommand), from the workspace binary.
fn help_text(cmd: &str, sub: Option<&str>) -> String {
    let mut c = Command::new(bin_dir().join(cmd));
    c.args(sub).arg("--help").env_clear();
    let out = c.output().unwrap_or_else(|e| panic!("{cmd} --help: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Environment variables set by a manifest that no binary reads: none may be
/// unknown to `cmd` (its `--help` names every variable it reads) except the
/// kubelet's own inputs (`$(VAR)` references) and the log filter.
fn unknown_env(
    c: &Value,
    env: &BTreeMap<String, String>,
    help: &str,
    args: &[String],
) -> Vec<String> {
    // Variables the kubelet expands in the command, arguments, env values and
    // subPathExpr of the container.
    let _ = args;
    let raw = [&c["command"], &c["args"], &c["env"], &c["volumeMounts"]]
        .iter()
        .map(|v| v.to_string())
        .collect::<String>();
    let referenced: BTreeSet<String> = raw
        .split("$(")
        .skip(1)
        .filter_map(|r| r.split_once(')').map(|(n, _)| n.to_string()))
        .collect();
    env.keys()
        .filter(|k| {
            let word = |t: &str| {
                t.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .any(|w| w == k.as_str())
            };
            !(k.as_str() == "RUST_LOG" || referenced.contains(k.as_str()) || word(help))
        })
        .cloned()
        .collect()
}

/// Everything wrong with one container of a pod template, without running it.
/// `what` names it in messages; `image_bins` are the image's executables.
fn check_container(
    what: &str,
    pod_spec: &Value,
    claims: &[Value],
    c: &Value,
    config_maps: &BTreeMap<String, BTreeMap<String, String>>,
    secrets: &BTreeMap<String, BTreeMap<String, String>>,
    image_bins: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut bad = |m: String| problems.push(format!("{what}: {m}"));
    let pod = PodInfo {
        name: "pod-0",
        namespace: "ns",
        node: "node-a",
        ip: "10.0.0.1",
    };
    let env = match container_env(c, &pod, config_maps, secrets) {
        Ok(e) => e,
        Err(e) => {
            bad(e);
            return problems;
        }
    };
    let cmd: Vec<String> = c["command"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let Some(cmd0) = cmd.first() else {
        bad("no command: the image's default command is `alces --help`".into());
        return problems;
    };
    if !image_bins.contains(cmd0.trim_start_matches("/usr/local/bin/")) {
        bad(format!(
            "command {cmd0} is not a binary of the image ({image_bins:?})"
        ));
        return problems;
    }
    let cmd0 = cmd0.trim_start_matches("/usr/local/bin/").to_string();
    let args: Vec<String> = cmd[1..]
        .iter()
        .cloned()
        .chain(
            c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string)),
        )
        .map(|a| expand(&a, &env))
        .collect();
    for a in &args {
        if a.contains("$(") {
            bad(format!(
                "argument {a} references a variable the container does not have"
            ));
        }
    }
    let sub = (cmd0 == "alces-csi")
        .then(|| args.first().cloned())
        .flatten();
    let help = help_text(&cmd0, sub.as_deref());
    if !help.contains("Usage") {
        bad(format!("{cmd0} {sub:?} --help printed no usage"));
    }
    for k in unknown_env(c, &env, &help, &args) {
        bad(format!(
            "environment variable {k} is read by no flag of {cmd0} (see its --help)"
        ));
    }
    // Probes: the HTTP port the arguments give, the paths the daemons serve.
    let http = http_port(&cmd0, &args, &env);
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let p = &c[probe];
        if p.is_null() {
            continue;
        }
        let Some(get) = p["httpGet"].as_object() else {
            bad(format!("{probe} is not an httpGet"));
            continue;
        };
        let path = get["path"].as_str().unwrap_or("");
        if !["/healthz", "/readyz"].contains(&path) {
            bad(format!(
                "{probe} path {path}: the daemons serve /healthz and /readyz"
            ));
        }
        let port = resolve_port(c, &get["port"]);
        // A probe may target a sidecar's port of the same pod (the CSI livenessprobe).
        let sidecar = pod_spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"] != c["name"])
            .any(|s| {
                s["args"].as_array().into_iter().flatten().any(|a| {
                    a.as_str()
                        .and_then(|a| a.strip_prefix("--health-port="))
                        .and_then(|v| v.parse::<i64>().ok())
                        == port
                })
            });
        if port.is_none() || (port != http && !sidecar) {
            bad(format!(
                "{probe} port {} is not the --http-listen port {http:?} of {cmd0} (nor a sidecar's --health-port)",
                get["port"]
            ));
        }
    }
    // Ports: every declared port is one the process (or a sidecar) listens on.
    let listens = listen_ports(&cmd0, &args, &env);
    for p in c["ports"].as_array().into_iter().flatten() {
        let n = p["containerPort"].as_i64().unwrap_or(0);
        let sidecar = pod_spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a.as_str() == Some(&format!("--health-port={n}")))
            });
        if !listens.contains(&n) && !sidecar {
            bad(format!(
                "port {} ({n}) is not a port {cmd0} listens on ({listens:?})",
                p["name"]
            ));
        }
    }
    // Paths: inside a volume, writable when the process writes there.
    for (src, path, writable) in named_paths(&args, &env) {
        let Some(m) = covering_mount(c, &path) else {
            bad(format!(
                "{src} {path} is in no volume mount: its data would be lost with the container"
            ));
            continue;
        };
        if writable && m["readOnly"] == true {
            bad(format!(
                "{src} {path} is on the read-only mount {}",
                m["mountPath"]
            ));
        }
    }
    // Mounts: each names a volume of the pod or a claim template.
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let n = &m["name"];
        let vol = pod_spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| &v["name"] == n);
        let claim = claims.iter().any(|t| &t["metadata"]["name"] == n);
        if !vol && !claim {
            bad(format!(
                "volume mount {n} names no volume nor claim template"
            ));
        }
    }
    problems
}

/// Everything wrong between Services and the pods they should reach.
/// `pods`: (pod name, labels, container) of each pod.
fn check_services(
    services: &[Value],
    pods: &[(String, BTreeMap<String, String>, Value)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for s in services {
        let name = s["metadata"]["name"].as_str().unwrap_or("?");
        let sel: BTreeMap<String, String> =
            serde_json::from_value(s["spec"]["selector"].clone()).unwrap_or_default();
        let picked: Vec<_> = pods
            .iter()
            .filter(|(_, l, _)| sel.iter().all(|(k, v)| l.get(k) == Some(v)))
            .collect();
        if picked.is_empty() {
            problems.push(format!("Service {name}: its selector {sel:?} picks no pod"));
            continue;
        }
        for port in s["spec"]["ports"].as_array().into_iter().flatten() {
            let target = if port["targetPort"].is_null() {
                &port["port"]
            } else {
                &port["targetPort"]
            };
            for (pod, _, c) in &picked {
                let n = resolve_port(c, target);
                let declared = c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| Some(p["containerPort"].as_i64().unwrap_or(-1)) == n);
                if !declared {
                    problems.push(format!(
                        "Service {name} port {}: target {target} is no port of pod {pod}'s container",
                        port["name"]
                    ));
                }
            }
        }
    }
    problems
}

/// The pods of a StatefulSet: (name, labels incl. the pod-name label, container).
fn sts_pods(sts: &Value) -> Vec<(String, BTreeMap<String, String>, Value)> {
    let name = sts["metadata"]["name"].as_str().unwrap();
    let n = sts["spec"]["replicas"].as_i64().unwrap_or(1);
    let labels: BTreeMap<String, String> =
        serde_json::from_value(sts["spec"]["template"]["metadata"]["labels"].clone()).unwrap();
    (0..n)
        .map(|i| {
            let pod = format!("{name}-{i}");
            let mut l = labels.clone();
            l.insert(builders::POD_NAME_LABEL.into(), pod.clone());
            (
                pod,
                l,
                sts["spec"]["template"]["spec"]["containers"][0].clone(),
            )
        })
        .collect()
}

fn image_bins() -> BTreeSet<String> {
    sh(&format!(
        "{}/image/build-oci --list-binaries",
        workspace().display()
    ))
    .expect("image/build-oci --list-binaries")
    .lines()
    .map(str::to_string)
    .collect()
}

/// Every static problem of what the operator builds and what the chart renders.
fn static_problems(op: &Operated, chart: &[Value], bins: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut pods = Vec::new();
    for sts in &op.statefulsets {
        let spec = &sts["spec"]["template"]["spec"];
        let claims: Vec<Value> = sts["spec"]["volumeClaimTemplates"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let init = spec["initContainers"].as_array().into_iter().flatten();
        for c in spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(init)
        {
            let what = format!(
                "StatefulSet {} container {}",
                sts["metadata"]["name"], c["name"]
            );
            problems.extend(check_container(
                &what,
                spec,
                &claims,
                c,
                &op.config_maps,
                &op.secrets,
                bins,
            ));
        }
        pods.extend(sts_pods(sts));
    }
    problems.extend(check_services(&op.services, &pods));
    // The master Service selects exactly the active master's pod.
    let master = op
        .services
        .iter()
        .find(|s| s["metadata"]["name"] == "demo-master")
        .unwrap();
    let sel: BTreeMap<String, String> =
        serde_json::from_value(master["spec"]["selector"].clone()).unwrap();
    let picked: Vec<_> = pods
        .iter()
        .filter(|(_, l, _)| sel.iter().all(|(k, v)| l.get(k) == Some(v)))
        .map(|p| p.0.clone())
        .collect();
    if picked != ["demo-metadata-0"] {
        problems.push(format!(
            "Service demo-master selects {picked:?}, not the active master demo-metadata-0 only"
        ));
    }
    // The master address the daemons are given is the master Service.
    let want = format!("demo-master.storage.svc:{}", builders::MASTER_PORT);
    for cm in op.config_maps.values() {
        if cm.get("ALCES_MASTER") != Some(&want) {
            problems.push(format!(
                "ALCES_MASTER is {:?}, not the master Service {want}",
                cm.get("ALCES_MASTER")
            ));
        }
    }
    let _ = &op.cluster;
    // The chart's containers of the Alces image.
    let mut workloads = 0;
    let mut chart_pods = Vec::new();
    for o in chart {
        let kind = o["kind"].as_str().unwrap_or("");
        if !["Deployment", "DaemonSet", "StatefulSet"].contains(&kind) {
            continue;
        }
        let spec = &o["spec"]["template"]["spec"];
        let cs = alces_containers(o);
        if cs.is_empty() {
            problems.push(format!(
                "{kind} {} runs no container of the Alces image",
                o["metadata"]["name"]
            ));
        }
        for c in &cs {
            workloads += 1;
            let what = format!(
                "chart {kind} {} container {}",
                o["metadata"]["name"], c["name"]
            );
            problems.extend(check_container(
                &what,
                spec,
                &[],
                c,
                &BTreeMap::new(),
                &BTreeMap::new(),
                bins,
            ));
            let labels: BTreeMap<String, String> =
                serde_json::from_value(o["spec"]["template"]["metadata"]["labels"].clone())
                    .unwrap_or_default();
            chart_pods.push((
                format!("{}-x", o["metadata"]["name"].as_str().unwrap_or("")),
                labels,
                c.clone(),
            ));
        }
    }
    if workloads < 3 {
        problems.push(format!("the chart renders {workloads} Alces containers; expected the operator, the CSI controller and the CSI node plugin"));
    }
    let services: Vec<Value> = chart
        .iter()
        .filter(|o| o["kind"] == "Service")
        .cloned()
        .collect();
    problems.extend(check_services(&services, &chart_pods));
    problems
}

// ---------------------------------------------------------------------------
// The emulated kubelet.

/// A bridge in a namespace of its own, with the test's (root) namespace
/// attached as 10.77.0.254, and one namespace per pod.
struct Net {
    prefix: String,
    pods: Vec<String>,
}

impl Net {
    fn new() -> Result<Self, String> {
        let prefix = format!("k8m{}", std::process::id() % 100_000);
        let n = Net {
            prefix,
            pods: Vec::new(),
        };
        let p = &n.prefix;
        sh(&format!(
            "ip netns add {p}-hub
             ip -n {p}-hub link add br0 type bridge
             ip -n {p}-hub link set br0 up
             ip link add {p}h type veth peer name {p}hp
             ip link set {p}hp netns {p}-hub
             ip -n {p}-hub link set {p}hp master br0 up
             ip addr add 10.77.0.254/24 dev {p}h
             ip link set {p}h up"
        ))?;
        Ok(n)
    }

    /// A namespace for pod number `i` with address 10.77.0.<i+1>.
    fn add(&mut self, i: usize) -> Result<(String, String), String> {
        let p = &self.prefix;
        let ns = format!("{p}-p{i}");
        let ip = format!("10.77.0.{}", i + 1);
        sh(&format!(
            "ip netns add {ns}
             ip link add {p}v{i} type veth peer name eth0 netns {ns}
             ip link set {p}v{i} netns {p}-hub
             ip -n {p}-hub link set {p}v{i} master br0 up
             ip -n {ns} addr add {ip}/24 dev eth0
             ip -n {ns} link set eth0 up
             ip -n {ns} link set lo up"
        ))?;
        self.pods.push(ns.clone());
        Ok((ns, ip))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.pods {
            let _ = sh(&format!("ip netns del {ns}"));
        }
        let p = &self.prefix;
        let _ = sh(&format!("ip link del {p}h; ip netns del {p}-hub"));
    }
}

/// A running pod: its process, address and log.
struct Pod {
    name: String,
    ip: String,
    child: Child,
    log: PathBuf,
}

impl Pod {
    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Makes the kubelet's directory for a claim: a fresh filesystem (root-owned
/// 0755 with a `lost+found` 0700), then `fsGroup` applied.
fn claim_dir(dir: &Path, fs_group: Option<u32>) -> Result<(), String> {
    if !dir.exists() {
        std::fs::create_dir_all(dir.join("lost+found")).map_err(|e| e.to_string())?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        std::fs::set_permissions(
            dir.join("lost+found"),
            std::fs::Permissions::from_mode(0o700),
        )
        .map_err(|e| e.to_string())?;
    }
    if let Some(g) = fs_group {
        // SetVolumeOwnership: group fsGroup, rw for the group, setgid directories.
        sh(&format!(
            "chgrp -R {g} {d}; find {d} -type d -exec chmod g+rwxs {{}} +; find {d} -type f -exec chmod g+rw {{}} +",
            d = q(&dir.display().to_string())
        ))?;
    }
    Ok(())
}

struct Kubelet {
    rootfs: PathBuf,
    work: PathBuf,
    /// Where hostPath paths live (a node's root).
    node_root: PathBuf,
    net: Net,
    next: usize,
}

impl Drop for Kubelet {
    /// Kills what a pod left running (a mount daemon of the node plugin): every
    /// process whose root directory is a pod's.
    fn drop(&mut self) {
        let pods = self.work.join("pods");
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if std::fs::read_link(e.path().join("root")).is_ok_and(|r| r.starts_with(&pods)) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// The test's node mounts (see [`NodeMounts::new`]), detached on drop.
struct NodeMounts(PathBuf);

impl NodeMounts {
    /// Makes `work` a private mount and `kubelet` (inside it) a shared one.
    fn new(work: &Path, kubelet: &Path) -> Self {
        let (w, k) = (
            q(&work.display().to_string()),
            q(&kubelet.display().to_string()),
        );
        sh(&format!(
            "mount --bind {w} {w} && mount --make-private {w} && mount --bind {k} {k} && mount --make-shared {k}"
        ))
        .expect("the node's mounts");
        NodeMounts(work.to_path_buf())
    }
}

impl Drop for NodeMounts {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -l {}", q(&self.0.display().to_string())));
    }
}

/// Kills every process of the pod `name` (whose root directory is the pod's),
/// as the runtime does when a pod is deleted, and waits until they are gone.
fn kill_pod(work: &Path, name: &str) -> Result<(), String> {
    let root = work.join(format!("pods/{name}/root"));
    let of_pod = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
                std::fs::read_link(e.path().join("root"))
                    .is_ok_and(|r| r == root)
                    .then_some(pid)
            })
            .collect()
    };
    let found = of_pod();
    if found.is_empty() {
        return Err(format!(
            "no process of pod {name} (root {})",
            root.display()
        ));
    }
    eprintln!(
        "killing pod {name}: {:?}",
        found
            .iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default())
            .collect::<Vec<_>>()
    );
    for pid in found {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    until(
        &format!("every process of pod {name} to end"),
        Duration::from_secs(10),
        String::new,
        || {
            let left: Vec<i32> = of_pod()
                .into_iter()
                .filter(|&p| alces_e2e::alive(p))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );
    Ok(())
}

/// One pod to start.
struct PodSpec<'a> {
    name: &'a str,
    namespace: &'a str,
    spec: &'a Value,
    container: &'a Value,
    claims: &'a [Value],
    /// `hostNetwork`: the test's own network namespace (to reach an API server
    /// on loopback).
    host_network: bool,
    /// What the kubelet adds itself: (host directory, mount path) read-only
    /// (the service account token), and variables (KUBERNETES_SERVICE_*).
    extra_mounts: Vec<(PathBuf, String)>,
    extra_env: Vec<(String, String)>,
}

impl Kubelet {
    /// Starts `p`'s container as a kubelet would; `hosts` is its /etc/hosts.
    fn start(
        &mut self,
        p: &PodSpec,
        config_maps: &BTreeMap<String, BTreeMap<String, String>>,
        secrets: &BTreeMap<String, BTreeMap<String, String>>,
        hosts: &str,
    ) -> Result<Pod, String> {
        let i = self.next;
        self.next += 1;
        let (ns, ip) = if p.host_network {
            (String::new(), "127.0.0.1".to_string())
        } else {
            self.net.add(i)?
        };
        let dir = self.work.join(format!("pods/{}", p.name));
        std::fs::create_dir_all(dir.join("upper/etc")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir.join("work")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir.join("root")).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("upper/etc/hosts"), hosts).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("upper/etc/hostname"), format!("{}\n", p.name))
            .map_err(|e| e.to_string())?;
        let c = p.container;
        let psc = &p.spec["securityContext"];
        let csc = &c["securityContext"];
        let pick = |k: &str| csc[k].as_u64().or_else(|| psc[k].as_u64());
        let uid = pick("runAsUser").unwrap_or(IMAGE_USER as u64) as u32;
        let gid = pick("runAsGroup").unwrap_or(IMAGE_USER as u64) as u32;
        let fs_group = psc["fsGroup"].as_u64().map(|g| g as u32);
        let non_root = csc["runAsNonRoot"]
            .as_bool()
            .or(psc["runAsNonRoot"].as_bool())
            .unwrap_or(false);
        if non_root && uid == 0 {
            return Err(format!(
                "pod {}: runAsNonRoot with user 0: the kubelet refuses to start it",
                p.name
            ));
        }
        let info = PodInfo {
            name: p.name,
            namespace: p.namespace,
            node: "node-a",
            ip: &ip,
        };
        let mut env = container_env(c, &info, config_maps, secrets)?;
        env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
        env.insert("HOSTNAME".into(), p.name.into());
        env.extend(p.extra_env.iter().cloned());
        // Volumes, as the kubelet prepares them on the node.
        let mut vol_src: BTreeMap<String, PathBuf> = BTreeMap::new();
        for v in p.spec["volumes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or("");
            let path = if let Some(s) = v["secret"].as_object() {
                let d = dir.join(format!("volumes/{name}"));
                std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
                let sname = s["secretName"].as_str().unwrap_or("");
                let data = secrets
                    .get(sname)
                    .ok_or_else(|| format!("pod {}: Secret {sname} does not exist", p.name))?;
                let mode = s
                    .get("defaultMode")
                    .and_then(Value::as_u64)
                    .unwrap_or(0o644) as u32;
                let items: Vec<(String, String)> = match s.get("items").and_then(Value::as_array) {
                    Some(items) => items
                        .iter()
                        .map(|it| {
                            (
                                it["key"].as_str().unwrap_or("").to_string(),
                                it["path"].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect(),
                    None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
                };
                for (k, path) in items {
                    let val = data
                        .get(&k)
                        .ok_or_else(|| format!("pod {}: Secret {sname} has no key {k}", p.name))?;
                    let f = d.join(&path);
                    std::fs::write(&f, val).map_err(|e| e.to_string())?;
                    let mut m = mode;
                    if let Some(g) = fs_group {
                        std::os::unix::fs::chown(&f, None, Some(g)).map_err(|e| e.to_string())?;
                        m |= 0o440;
                    }
                    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(m))
                        .map_err(|e| e.to_string())?;
                }
                d
            } else if let Some(h) = v["hostPath"].as_object() {
                let hp = h["path"].as_str().unwrap_or("");
                let ty = h.get("type").and_then(Value::as_str).unwrap_or("");
                if ty == "CharDevice" {
                    let m = std::fs::metadata(hp).map_err(|e| format!("hostPath {hp}: {e}"))?;
                    if m.mode() & 0o170000 != 0o020000 {
                        return Err(format!("hostPath {hp} is not a character device"));
                    }
                    PathBuf::from(hp)
                } else {
                    let d = self.node_root.join(hp.trim_start_matches('/'));
                    if !d.exists() {
                        if ty == "DirectoryOrCreate" {
                            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
                            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
                                .map_err(|e| e.to_string())?;
                        } else {
                            return Err(format!(
                                "pod {}: hostPath {hp} (type {ty:?}) does not exist on the node",
                                p.name
                            ));
                        }
                    }
                    d
                }
            } else if v.get("emptyDir").is_some() {
                let d = dir.join(format!("volumes/{name}"));
                std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| e.to_string())?;
                d
            } else {
                return Err(format!(
                    "pod {}: volume {name} ({v}) is not emulated",
                    p.name
                ));
            };
            vol_src.insert(name.to_string(), path);
        }
        for t in p.claims {
            let name = t["metadata"]["name"].as_str().unwrap_or("");
            let d = self.work.join(format!("claims/{name}-{}", p.name));
            claim_dir(&d, fs_group)?;
            vol_src.insert(name.to_string(), d);
        }
        // The script run in the pod's namespaces: root filesystem, mounts, user.
        let root = dir.join("root");
        let r = q(&root.display().to_string());
        let mut s = format!(
            "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {r}\n",
            self.rootfs.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        s += &format!("mkdir -p {r}/proc {r}/dev {r}/etc\nmount -t proc proc {r}/proc\nmount -t tmpfs -o mode=755 tmpfs {r}/dev\n");
        for d in ["null", "zero", "random", "urandom", "full"] {
            s += &format!("touch {r}/dev/{d}; mount --bind /dev/{d} {r}/dev/{d}\n");
        }
        let mut bidirectional = false;
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap_or("");
            let src = vol_src
                .get(name)
                .ok_or_else(|| format!("pod {}: mount of unknown volume {name}", p.name))?;
            let mut src = src.clone();
            let sub = m["subPathExpr"]
                .as_str()
                .map(|x| expand(x, &env))
                .or_else(|| m["subPath"].as_str().map(str::to_string));
            if let Some(sub) = sub {
                // The kubelet makes the subdirectory, owned by root, with the volume's mode.
                let mode = std::fs::metadata(&src).map_err(|e| e.to_string())?.mode() & 0o7777;
                src = src.join(sub);
                std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
                std::fs::set_permissions(&src, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| e.to_string())?;
            }
            let target = format!("{r}{}", q(m["mountPath"].as_str().unwrap_or("/")));
            if src.is_dir() {
                s += &format!("mkdir -p {target}\n");
            } else {
                s += &format!("mkdir -p \"$(dirname {target})\"; touch {target}\n");
            }
            if m["mountPropagation"] == "Bidirectional" {
                // Everything mounted under it (before, by others; after, by this
                // pod) is seen on both sides.
                bidirectional = true;
                s += &format!("mount --rbind {} {target}\n", q(&src.display().to_string()));
            } else {
                s += &format!("mount --bind {} {target}\n", q(&src.display().to_string()));
            }
            if m["readOnly"] == true {
                s += &format!("mount -o remount,bind,ro {target}\n");
            }
        }
        for (src, path) in &p.extra_mounts {
            let target = format!("{r}{}", q(path));
            s += &format!(
                "mkdir -p {target}\nmount --bind {} {target}\nmount -o remount,bind,ro {target}\n",
                q(&src.display().to_string())
            );
        }
        s += &format!("hostname {}\n", q(p.name));
        if csc["readOnlyRootFilesystem"] == true {
            s += &format!("mount -o remount,ro {r}\n");
        }
        // Init containers, in order, each to completion before the container
        // starts. Emulated when their mounts are the container's (same volume,
        // path and subdirectory); a root one runs with only the capabilities
        // it adds (and those chroot needs to enter the image: SYS_CHROOT,
        // SETUID, SETGID), so never with DAC_OVERRIDE or DAC_READ_SEARCH.
        for ic in p.spec["initContainers"].as_array().into_iter().flatten() {
            let name = ic["name"].as_str().unwrap_or("");
            for m in ic["volumeMounts"].as_array().into_iter().flatten() {
                let same = c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|cm| {
                        ["name", "mountPath", "subPath", "subPathExpr", "readOnly"]
                            .iter()
                            .all(|k| cm[*k] == m[*k])
                    });
                if !same {
                    return Err(format!(
                        "pod {}: init container {name} mounts {m}, which the container does not: not emulated",
                        p.name
                    ));
                }
            }
            let isc = &ic["securityContext"];
            let ipick = |k: &str| isc[k].as_u64().or_else(|| psc[k].as_u64());
            let iuid = ipick("runAsUser").unwrap_or(IMAGE_USER as u64);
            let igid = ipick("runAsGroup").unwrap_or(IMAGE_USER as u64);
            let inon_root = isc["runAsNonRoot"]
                .as_bool()
                .or(psc["runAsNonRoot"].as_bool())
                .unwrap_or(false);
            if inon_root && iuid == 0 {
                return Err(format!(
                    "pod {}: init container {name} has runAsNonRoot with user 0",
                    p.name
                ));
            }
            let ienv = container_env(ic, &info, config_maps, secrets)?;
            let iargv: Vec<String> = ic["command"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(ic["args"].as_array().into_iter().flatten())
                .filter_map(|a| a.as_str())
                .map(|a| expand(a, &ienv))
                .collect();
            let added: Vec<String> = isc["capabilities"]["add"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str())
                .map(|c| format!("+{}", c.to_lowercase()))
                .collect();
            let caps = added.join(",");
            s += "env -i PATH=/usr/local/bin:/usr/bin:/bin";
            for (k, v) in &ienv {
                s += &format!(" {}", q(&format!("{k}={v}")));
            }
            if iuid == 0 {
                s += &format!(
                    " setpriv --bounding-set=-all,+sys_chroot,+setuid,+setgid{}{caps} --inh-caps=-all{}{caps}",
                    if caps.is_empty() { "" } else { "," },
                    if caps.is_empty() { "" } else { "," },
                );
            }
            s += &format!(" \"$(command -v chroot)\" --userspec={iuid}:{igid} --groups={igid} {r}");
            for a in &iargv {
                s += &format!(" {}", q(a));
            }
            s += &format!(" || {{ echo 'init container {name} failed'; exit 1; }}\n");
        }
        let mut groups = vec![gid.to_string()];
        groups.extend(fs_group.map(|g| g.to_string()));
        // Command and args, expanded as the kubelet does.
        let argv: Vec<String> = c["command"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(c["args"].as_array().into_iter().flatten())
            .filter_map(|a| a.as_str())
            .map(|a| expand(a, &env))
            .collect();
        s += "chroot=$(command -v chroot)\nexec env -i";
        for (k, v) in &env {
            s += &format!(" {}", q(&format!("{k}={v}")));
        }
        s += &format!(
            " \"$chroot\" --userspec={uid}:{gid} --groups={} {r}",
            groups.join(",")
        );
        for a in &argv {
            s += &format!(" {}", q(a));
        }
        s += "\n";
        std::fs::write(dir.join("start.sh"), &s).map_err(|e| e.to_string())?;
        let log = dir.join("log");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns]);
        if p.host_network {
            cmd = Command::new("unshare");
        } else if bidirectional {
            // `ip netns exec` makes every mount a slave of the node's, so mounts
            // made in the pod would not reach the node: enter the network
            // namespace alone.
            cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/run/netns/{ns}")).arg("unshare");
        } else {
            cmd.arg("unshare");
        }
        // A pod with a Bidirectional mount keeps the node's propagation (the
        // work directory it mounts its root under is private on the node).
        let propagation = if bidirectional {
            "unchanged"
        } else {
            "private"
        };
        let child = cmd
            .args([
                "--mount",
                "--uts",
                "--propagation",
                propagation,
                "bash",
                "-e",
            ])
            .arg(dir.join("start.sh"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("ip netns exec: {e}"))?;
        Ok(Pod {
            name: p.name.to_string(),
            ip,
            child,
            log,
        })
    }
}

/// GET `path` of `ip:port`: the status code.
fn http_get(ip: &str, port: i64, path: &str) -> Option<u16> {
    let addr = format!("{ip}:{port}").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `f` until it returns Ok or `timeout` passes (then the last error).
fn until<T>(
    what: &str,
    timeout: Duration,
    logs: impl Fn() -> String,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}: {e}{}", logs());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn probe_ok(pod: &mut Pod, c: &Value) -> Result<(), String> {
    probes_answer(pod, c, &["livenessProbe", "readinessProbe"])
}

/// Each of `probes` of container `c` answers 200 (an absent probe passes).
fn probes_answer(pod: &mut Pod, c: &Value, probes: &[&str]) -> Result<(), String> {
    if let Ok(Some(st)) = pod.child.try_wait() {
        return Err(format!(
            "pod {} exited ({st}): {}",
            pod.name,
            pod.log_tail()
        ));
    }
    for probe in probes {
        let g = &c[*probe]["httpGet"];
        if g.is_null() {
            continue;
        }
        let port = resolve_port(c, &g["port"]).ok_or("probe port")?;
        let path = g["path"].as_str().unwrap_or("");
        match http_get(&pod.ip, port, path) {
            Some(200) => {}
            other => {
                return Err(format!(
                    "pod {} {probe} {path} on {port}: {other:?}",
                    pod.name
                ))
            }
        }
    }
    Ok(())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn master_status(rt: &tokio::runtime::Runtime, addr: &str) -> Result<pb::ClusterStatus, String> {
    let auth = ClientAuth::new(SECRET).map_err(|e| e.to_string())?;
    let _g = rt.enter();
    let ch = alces_proto::net::channel(addr, &auth)?;
    rt.block_on(async move {
        let mut c = pb::admin_client::AdminClient::new(ch);
        tokio::time::timeout(Duration::from_secs(3), c.status(pb::Empty {}))
            .await
            .map_err(|_| "Status timed out".to_string())?
            .map(|r| r.into_inner())
            .map_err(|s| s.to_string())
    })
}

fn bootstrap(rt: &tokio::runtime::Runtime, addr: &str) -> Result<pb::PromoteReply, String> {
    let auth = ClientAuth::new(SECRET).map_err(|e| e.to_string())?;
    let _g = rt.enter();
    let ch = alces_proto::net::channel(addr, &auth)?;
    rt.block_on(async move {
        let mut c = pb::metalogger_client::MetaloggerClient::new(ch);
        c.promote(pb::PromoteRequest {
            bootstrap: true,
            epoch: 1,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.to_string())
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------
// The tests.

/// A change that breaks a container manifest.
type Breaker = Box<dyn Fn(&mut Value)>;

/// The checks above catch what they are for: each broken manifest is reported.
#[test]
fn broken_manifests_are_reported() {
    let bins = image_bins();
    let op = operated("demo-metadata-0");
    let sts = &op.statefulsets[1];
    let spec = &sts["spec"]["template"]["spec"];
    let claims: Vec<Value> = vec![];
    let good = &spec["containers"][0];
    let clean = check_container(
        "cs",
        spec,
        &claims,
        good,
        &op.config_maps,
        &op.secrets,
        &bins,
    );
    assert!(
        clean.is_empty(),
        "the sample chunkserver has problems: {clean:#?}"
    );
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "command not in the image",
            Box::new(|c| c["command"] = json!(["alces-chunkd"])),
            "not a binary of the image",
        ),
        (
            "probe on another port",
            Box::new(|c| c["readinessProbe"]["httpGet"]["port"] = json!(9999)),
            "is not the --http-listen port",
        ),
        (
            "probe path",
            Box::new(|c| c["livenessProbe"]["httpGet"]["path"] = json!("/health")),
            "path /health",
        ),
        (
            "unknown variable",
            Box::new(|c| {
                c["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "ALCES_CHUNKSERVER_DATADIR", "value": "/data"}))
            }),
            "ALCES_CHUNKSERVER_DATADIR is read by no flag",
        ),
        (
            "data dir in no mount",
            Box::new(|c| {
                c["args"]
                    .as_array_mut()
                    .unwrap()
                    .extend([json!("--data-dir"), json!("/scratch")])
            }),
            "--data-dir /scratch is in no volume mount",
        ),
        (
            "read-only data dir",
            Box::new(|c| c["volumeMounts"][0]["readOnly"] = json!(true)),
            "is on the read-only mount",
        ),
        (
            "undeclared variable in an argument",
            Box::new(|c| {
                c["args"]
                    .as_array_mut()
                    .unwrap()
                    .extend([json!("--advertise"), json!("$(POD_IP):9422")])
            }),
            "references a variable",
        ),
        (
            "port no flag listens on",
            Box::new(|c| {
                c["ports"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "x", "containerPort": 9999}))
            }),
            "is not a port alces-chunkserver listens on",
        ),
        (
            "secret file outside any mount",
            Box::new(|c| {
                c["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "ALCES_SECRET_FILE", "value": "/etc/secret"}))
            }),
            "ALCES_SECRET_FILE /etc/secret is in no volume mount",
        ),
    ];
    for (name, break_it, want) in cases {
        let mut c = good.clone();
        break_it(&mut c);
        let p = check_container("cs", spec, &claims, &c, &op.config_maps, &op.secrets, &bins);
        assert!(
            p.iter().any(|m| m.contains(want)),
            "{name}: not reported (want '{want}'), got {p:#?}"
        );
    }
    // A master Service selecting the wrong pod, a Service port no pod has.
    let mut bad_svc = op.services.clone();
    bad_svc[2]["spec"]["selector"]["app.kubernetes.io/component"] = json!("master");
    bad_svc[1]["spec"]["ports"][0]["targetPort"] = json!(9999);
    let pods: Vec<_> = op.statefulsets.iter().flat_map(sts_pods).collect();
    let p = check_services(&bad_svc, &pods);
    assert!(
        p.iter()
            .any(|m| m.contains("Service demo-master: its selector")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|m| m.contains("Service demo-chunkservers port")),
        "{p:#?}"
    );
}

/// What the operator builds and the chart renders, checked against the binaries.
#[test]
fn manifests_match_the_binaries() {
    let bins = image_bins();
    let op = operated("demo-metadata-0");
    let chart = chart_objects();
    let problems = static_problems(&op, &chart, &bins);
    assert!(
        problems.is_empty(),
        "the manifests do not match the binaries:\n{}",
        problems.join("\n")
    );
}

/// Hostnames a pod resolves: every pod's DNS names and every Service (to the
/// Ready pods it selects; `ready` says which are).
fn hosts_file(op: &Operated, ips: &BTreeMap<String, String>, ready: &BTreeSet<String>) -> String {
    let mut h = String::from("127.0.0.1 localhost\n");
    let pods: Vec<_> = op
        .statefulsets
        .iter()
        .flat_map(|s| {
            let svc = s["spec"]["serviceName"].as_str().unwrap().to_string();
            sts_pods(s).into_iter().map(move |p| (p, svc.clone()))
        })
        .collect();
    for ((pod, _, _), svc) in &pods {
        if let Some(ip) = ips.get(pod) {
            h += &format!(
                "{ip} {pod}.{svc}.storage.svc {pod}.{svc}.storage.svc.cluster.local {pod}\n"
            );
        }
    }
    for s in &op.services {
        if s["spec"]["clusterIP"] == "None" {
            continue;
        }
        let name = s["metadata"]["name"].as_str().unwrap();
        let sel: BTreeMap<String, String> =
            serde_json::from_value(s["spec"]["selector"].clone()).unwrap();
        // A ClusterIP Service reaches Ready pods only; here its name is the pod's address.
        if let Some(((pod, _, _), _)) = pods.iter().find(|((p, l, _), _)| {
            ready.contains(p) && sel.iter().all(|(k, v)| l.get(k) == Some(v))
        }) {
            h += &format!(
                "{} {name}.storage.svc {name}.storage.svc.cluster.local\n",
                ips[pod]
            );
        }
    }
    h
}

/// The operator's pods and the chart's CSI plugins, run as a kubelet runs them.
#[test]
fn pods_start_become_ready_and_serve() {
    if !is_root() {
        println!("SKIPPED: running pods like a kubelet needs root (namespaces, mounts, chroot)");
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("alces-k8s-manifests")
        .tempdir_in("/tmp")
        .unwrap();
    let rootfs = work.path().join("rootfs");
    sh(&format!(
        "{}/image/build-oci --profile dev --no-build --rootfs-only {}",
        workspace().display(),
        rootfs.display()
    ))
    .expect("image/build-oci --rootfs-only (after cargo build --workspace --bins)");
    for b in ["alces-mount", "alces-csi"] {
        assert!(
            rootfs.join("usr/local/bin").join(b).is_file(),
            "{b} is not in the image"
        );
    }
    assert!(
        rootfs.join("usr/bin/fusermount3").is_file(),
        "fusermount3 is not in the image"
    );
    let node_root = work.path().join("node");
    std::fs::create_dir_all(node_root.join("var/lib/kubelet/plugins_registry")).unwrap();
    // The node's mounts: the work directory private (nothing a pod mounts under
    // it reaches the host), the kubelet's directory shared, so that the mounts
    // a pod makes under a Bidirectional mount of it reach the node and outlive
    // the pod, as on a kubelet.
    let _node_mounts = NodeMounts::new(work.path(), &node_root.join("var/lib/kubelet"));
    let mut kubelet = Kubelet {
        rootfs: rootfs.clone(),
        work: work.path().to_path_buf(),
        node_root: node_root.clone(),
        net: Net::new().expect("network namespaces"),
        next: 0,
    };
    let op = operated("demo-metadata-0");
    // Addresses are known before the pods start (each pod is pod number i).
    let all: Vec<_> = op
        .statefulsets
        .iter()
        .flat_map(|s| sts_pods(s).into_iter().map(move |p| (p, s.clone())))
        .collect();
    let ips: BTreeMap<String, String> = all
        .iter()
        .enumerate()
        .map(|(i, ((p, _, _), _))| (p.clone(), format!("10.77.0.{}", i + 1)))
        .collect();
    // The master Service reaches the active master's pod once it is Ready; all
    // metadata pods are started before it is (the pods' /etc/hosts is written
    // once, so it names the master the operator will choose).
    let ready: BTreeSet<String> = ["demo-metadata-0".to_string()].into();
    let hosts = hosts_file(&op, &ips, &ready);
    let mut pods = Vec::new();
    for ((name, _, c), sts) in &all {
        let claims: Vec<Value> = sts["spec"]["volumeClaimTemplates"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let p = PodSpec {
            name,
            namespace: "storage",
            spec: &sts["spec"]["template"]["spec"],
            container: c,
            claims: &claims,
            host_network: false,
            extra_mounts: Vec::new(),
            extra_env: Vec::new(),
        };
        let pod = kubelet
            .start(&p, &op.config_maps, &op.secrets, &hosts)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pod.ip, ips[name.as_str()]);
        pods.push((pod, c.clone()));
    }
    let rt = rt();
    // Metadata pods before any master exists: alive, and not Ready (a
    // metalogger is ready once it follows a master, caught up); the
    // bootstrap does not wait for readiness.
    let none = String::new;
    for (p, c) in pods
        .iter_mut()
        .filter(|(p, _)| p.name.starts_with("demo-metadata"))
    {
        until(
            &format!("{} alive as a metalogger", p.name),
            Duration::from_secs(30),
            none,
            || probes_answer(p, c, &["livenessProbe"]),
        );
        assert!(
            probes_answer(p, c, &["readinessProbe"]).is_err(),
            "{} is Ready before any master exists",
            p.name
        );
    }
    // The operator's bootstrap of ordinal 0.
    let m0 = &ips["demo-metadata-0"];
    let logs = || {
        pods.iter()
            .map(|(p, _)| format!("\n--- {} ({}) log:\n{}", p.name, p.ip, p.log_tail()))
            .collect::<String>()
    };
    let reply = until(
        "Promote{bootstrap} of demo-metadata-0",
        Duration::from_secs(30),
        logs,
        || bootstrap(&rt, &format!("{m0}:{}", builders::METALOGGER_PORT)),
    );
    assert_eq!(reply.epoch, 1);
    // Through the master Service's port: every chunkserver and metalogger connected.
    let cs_total: i64 = op.statefulsets[1..]
        .iter()
        .map(|s| s["spec"]["replicas"].as_i64().unwrap())
        .sum();
    let st = until(
        "every chunkserver and metalogger connected to the master",
        Duration::from_secs(60),
        logs,
        || {
            let st = master_status(&rt, &format!("{m0}:{}", builders::MASTER_PORT))?;
            let cs = st.chunkservers.iter().filter(|c| c.connected).count() as i64;
            let ml = st.metaloggers.iter().filter(|m| m.connected).count();
            if cs == cs_total && ml == 2 {
                Ok(st)
            } else {
                Err(format!(
                    "{cs}/{cs_total} chunkservers, {ml}/2 metaloggers: {st:?}"
                ))
            }
        },
    );
    // The tuning and labels the manifests give reached the daemons.
    assert_eq!(
        st.chunk_size,
        4 << 20,
        "ALCES_CHUNK_SIZE from the ConfigMap"
    );
    assert_eq!(
        st.sync_metaloggers, 1,
        "ALCES_SYNC_METALOGGERS from the ConfigMap"
    );
    let t = st.tuning.unwrap_or_default();
    assert_eq!(
        (
            t.replication_rate,
            t.chunkserver_timeout_secs,
            t.session_timeout_secs
        ),
        (64, 30, 20)
    );
    let labels: BTreeSet<String> = st.chunkservers.iter().map(|c| c.label.clone()).collect();
    assert!(
        labels.contains("rack-a"),
        "the pool's failure domain reached the master: {labels:?}"
    );
    for c in &st.chunkservers {
        assert!(
            c.address.contains(".demo-chunkservers.storage.svc:9422"),
            "chunkserver advertises {}",
            c.address
        );
    }
    // The master answers on the ports of the master Service, served by pod 0.
    let svc = &op.services[2];
    for port in svc["spec"]["ports"].as_array().unwrap() {
        let n = port["targetPort"].as_i64().unwrap();
        if port["name"] == "http" {
            assert_eq!(
                http_get(m0, n, "/readyz"),
                Some(200),
                "the master's HTTP port {n} behind the Service"
            );
        }
    }
    // Every pod: both probes 200, and still running.
    for (p, c) in pods.iter_mut() {
        until(
            &format!("{} probes", p.name),
            Duration::from_secs(20),
            none,
            || probe_ok(p, c),
        );
    }
    // The data landed in the volumes: chunkserver identities on their first disk.
    // The data is in the volumes: a chunk folder on each chunkserver disk
    // (2 hostPath subdirectories, 2 claims), the metadata in each claim.
    let found = sh(&format!(
        "cd {} && find node claims -type d -name chunks | sort; find claims -name '*.id' -o -name 'epoch*' | sort",
        work.path().display()
    ))
    .unwrap();
    for want in [
        "node/var/lib/alces/chunks/demo-cs-hdd-0/chunks",
        "node/var/lib/alces/chunks/demo-cs-hdd-1/chunks",
        "claims/disk-d0-demo-cs-ssd-0/chunks",
        "claims/disk-d1-demo-cs-ssd-0/chunks",
    ] {
        assert!(
            found.lines().any(|l| l == want),
            "no {want} among the volumes' folders:\n{found}"
        );
    }
    for i in 0..3 {
        let d = work
            .path()
            .join(format!("claims/metadata-demo-metadata-{i}"));
        let n = std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0);
        assert!(
            n > 1,
            "the metadata claim of demo-metadata-{i} holds nothing but lost+found"
        );
    }
    // The chart's CSI plugins, resolving the cluster's names like any pod.
    // No API server serves these pods, so the CSI controller keeps no
    // per-volume credential Secrets here; that path runs against a real one in
    // csi_credentials.rs.
    let chart = chart_objects_with(&["csi.volumeCredentials.enabled=false"]);
    let mut csi_pods = Vec::new();
    let mut holder = None;
    let empty = BTreeMap::new();
    for o in &chart {
        if !["Deployment", "DaemonSet"].contains(&o["kind"].as_str().unwrap_or("")) {
            continue;
        }
        for c in alces_containers(o) {
            if c["command"][0] != "alces-csi" {
                continue;
            }
            if c["args"][0] == "hold" {
                holder = Some((o.clone(), c.clone()));
                continue;
            }
            let name = format!("{}-0", o["metadata"]["name"].as_str().unwrap());
            let p = PodSpec {
                name: &name,
                namespace: "alces",
                spec: &o["spec"]["template"]["spec"],
                container: &c,
                claims: &[],
                host_network: false,
                extra_mounts: Vec::new(),
                extra_env: Vec::new(),
            };
            let pod = kubelet
                .start(&p, &empty, &empty, &hosts)
                .unwrap_or_else(|e| panic!("{e}"));
            csi_pods.push((pod, c, o.clone()));
        }
    }
    assert_eq!(csi_pods.len(), 2, "the CSI controller and node plugin");
    let (holder_ds, holder_c) = holder.expect("the chart's descriptor holder DaemonSet");
    let holder_name = format!("{}-0", holder_ds["metadata"]["name"].as_str().unwrap());
    let holder_pod = kubelet
        .start(
            &PodSpec {
                name: &holder_name,
                namespace: "alces",
                spec: &holder_ds["spec"]["template"]["spec"],
                container: &holder_c,
                claims: &[],
                host_network: false,
                extra_mounts: Vec::new(),
                extra_env: Vec::new(),
            },
            &empty,
            &empty,
            &hosts,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    for (p, c, o) in csi_pods.iter_mut() {
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        let port = port_of(flag(&args, "--http-listen").unwrap()).unwrap();
        until(
            &format!("{} /readyz", p.name),
            Duration::from_secs(20),
            none,
            || {
                if let Ok(Some(st)) = p.child.try_wait() {
                    return Err(format!("exited {st}: {}", p.log_tail()));
                }
                match http_get(&p.ip, port, "/readyz") {
                    Some(200) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        );
        // The socket is where the sidecars (and the kubelet, for the node) look.
        let ep = flag(&args, "--endpoint")
            .unwrap()
            .trim_start_matches("unix://")
            .to_string();
        let m = covering_mount(c, &ep).expect("socket in a volume").clone();
        let vol = o["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap()
            .clone();
        let rel = ep
            .strip_prefix(m["mountPath"].as_str().unwrap())
            .unwrap()
            .trim_start_matches('/');
        let host = match vol["hostPath"]["path"].as_str() {
            Some(h) => node_root.join(h.trim_start_matches('/')).join(rel),
            None => work
                .path()
                .join(format!(
                    "pods/{}/volumes/{}",
                    p.name,
                    m["name"].as_str().unwrap()
                ))
                .join(rel),
        };
        until(
            &format!("{} socket {}", p.name, host.display()),
            Duration::from_secs(10),
            none,
            || {
                if host.exists() {
                    Ok(())
                } else {
                    Err("missing".to_string())
                }
            },
        );
        for s in o["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            for a in s["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
            {
                if let Some(addr) = a.strip_prefix("--csi-address=") {
                    assert_eq!(
                        addr, ep,
                        "sidecar {} looks for the socket elsewhere",
                        s["name"]
                    );
                }
                if let Some(reg) = a.strip_prefix("--kubelet-registration-path=") {
                    assert_eq!(
                        node_root.join(reg.trim_start_matches('/')),
                        host,
                        "the registration path is not the node plugin's socket on the node"
                    );
                }
            }
        }
    }

    // A volume through the chart's StorageClass: CreateVolume on the
    // controller's socket with the class's parameters (the provisioner drops
    // the csi.storage.k8s.io/ keys and passes the Secret they name), then
    // NodeStageVolume and NodePublishVolume on the node plugin's: alces-mount
    // from the image mounts it with the pod's /dev/fuse.
    let class = chart
        .iter()
        .find(|o| o["kind"] == "StorageClass")
        .expect("a StorageClass");
    let params: std::collections::HashMap<String, String> = class["parameters"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/"))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(
        class["parameters"]["csi.storage.k8s.io/provisioner-secret-name"],
        "demo-secret"
    );
    assert_eq!(
        class["parameters"]["csi.storage.k8s.io/provisioner-secret-namespace"],
        "storage"
    );
    let secrets =
        std::collections::HashMap::from([(builders::SECRET_KEY.to_string(), SECRET.to_string())]);
    let ctl_sock = work
        .path()
        .join("pods/alces-csi-controller-0/volumes/socket-dir/csi.sock");
    let node_sock = node_root.join("var/lib/kubelet/plugins/csi.alces.io/csi.sock");
    let kubelet_dir = "/var/lib/kubelet";
    let staging = format!("{kubelet_dir}/plugins/kubernetes.io/csi/csi.alces.io/k8m/globalmount");
    let target = format!("{kubelet_dir}/pods/p1/volumes/kubernetes.io~csi/pvc-k8m/mount");
    std::fs::create_dir_all(node_root.join(staging.trim_start_matches('/'))).unwrap();
    std::fs::create_dir_all(
        node_root
            .join(target.trim_start_matches('/'))
            .parent()
            .unwrap(),
    )
    .unwrap();
    let rwx = alces_csi::pb::VolumeCapability {
        access_type: Some(alces_csi::pb::volume_capability::AccessType::Mount(
            Default::default(),
        )),
        access_mode: Some(alces_csi::pb::volume_capability::AccessMode {
            mode: alces_csi::pb::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    };
    let csi_logs = || {
        csi_pods
            .iter()
            .map(|(p, _, _)| format!("\n--- {} log:\n{}", p.name, p.log_tail()))
            .collect::<String>()
    };
    // The node plugin's pod, to start it again.
    let (node_ds, node_c) = csi_pods
        .iter()
        .find(|(p, _, _)| p.name.ends_with("-csi-node-0"))
        .map(|(_, c, o)| (o.clone(), c.clone()))
        .expect("the node plugin pod");
    let holder_args: Vec<String> = holder_c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let state_vols = node_root
        .join(
            flag(&holder_args, "--state-dir")
                .expect("the holder's --state-dir")
                .trim_start_matches('/'),
        )
        .join("volumes");
    let mut restarted: Option<Pod> = None;
    let mut writer: Option<Child> = None;
    let mut pause = Duration::ZERO;
    let stats = rt.block_on(async {
        use alces_csi::pb;
        let ctl = alces_csi::uds::connect(ctl_sock.clone())
            .await
            .expect("controller socket");
        let node = alces_csi::uds::connect(node_sock.clone())
            .await
            .expect("node plugin socket");
        let mut ctl = pb::controller_client::ControllerClient::new(ctl);
        let mut node = pb::node_client::NodeClient::new(node);
        let vol = ctl
            .create_volume(pb::CreateVolumeRequest {
                name: "pvc-k8m".into(),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: 64 << 20,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![rwx.clone()],
                parameters: params.clone(),
                secrets: secrets.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| {
                format!("CreateVolume with the chart's StorageClass parameters {params:?}: {s}")
            })?
            .into_inner()
            .volume
            .ok_or("CreateVolume returned no volume")?;
        node.node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.clone(),
            volume_capability: Some(rwx.clone()),
            secrets: secrets.clone(),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("NodeStageVolume: {s}"))?;
        node.node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.clone(),
            target_path: target.clone(),
            volume_capability: Some(rwx.clone()),
            secrets: secrets.clone(),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("NodePublishVolume: {s}"))?;
        let st = node
            .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                volume_id: vol.volume_id.clone(),
                volume_path: target.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("NodeGetVolumeStats: {s}"))?
            .into_inner();

        // The node plugin pod deleted (every process of it killed, its mount
        // daemon too) while the holder pod lives and a process on the node
        // appends and fsyncs through the pod's target path: the holder keeps the
        // connection, a new node plugin pod takes it back and starts a daemon,
        // and the writer sees a pause, no error, nothing fsynced lost.
        until(
            "the holder pod to hold the volume's connection",
            Duration::from_secs(20),
            none,
            || {
                let held = std::fs::read_dir(&state_vols)
                    .map_err(|e| e.to_string())?
                    .flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "held"));
                if held {
                    Ok(())
                } else {
                    Err(format!("no .held file in {}", state_vols.display()))
                }
            },
        );
        let wdir = work.path().join("writer");
        std::fs::create_dir_all(&wdir).map_err(|e| e.to_string())?;
        let (count_file, stop_file) = (wdir.join("count"), wdir.join("stop"));
        let app = node_root.join(target.trim_start_matches('/')).join("app.log");
        // A process of its own (the test keeps no file open on the mount, so the
        // processes it starts later never flush one at their exec).
        writer = Some(
            Command::new("bash")
                .arg("-c")
                .arg(
                    r#"i=0; while [ ! -e "$3" ]; do i=$((i+1)); printf '%08d\n' $i | dd of="$1" oflag=append conv=notrunc,fsync status=none || { echo "line $i: dd failed" >&2; exit 1; }; echo $i >"$2.tmp"; mv "$2.tmp" "$2"; done"#,
                )
                .arg("writer")
                .arg(&app)
                .arg(&count_file)
                .arg(&stop_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(wdir.join("err")).map_err(|e| e.to_string())?,
                )
                .spawn()
                .map_err(|e| format!("the writer: {e}"))?,
        );
        let count = || -> u64 {
            std::fs::read_to_string(&count_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0)
        };
        until("the writer to fsync 3 lines", Duration::from_secs(20), none, || {
            if count() >= 3 {
                Ok(())
            } else {
                Err(format!("{} lines", count()))
            }
        });
        let old_name = format!("{}-0", node_ds["metadata"]["name"].as_str().unwrap());
        kill_pod(work.path(), &old_name)?;
        let at_kill = count();
        let t = Instant::now();
        let new_name = format!("{}-1", node_ds["metadata"]["name"].as_str().unwrap());
        restarted = Some(kubelet.start(
            &PodSpec {
                name: &new_name,
                namespace: "alces",
                spec: &node_ds["spec"]["template"]["spec"],
                container: &node_c,
                claims: &[],
                host_network: false,
                extra_mounts: Vec::new(),
                extra_env: Vec::new(),
            },
            &empty,
            &empty,
            &hosts,
        )?);
        until(
            "the writer to fsync again through the new node plugin pod's daemon",
            Duration::from_secs(60),
            none,
            || {
                if let Some(Ok(Some(st))) = writer.as_mut().map(Child::try_wait) {
                    return Err(format!(
                        "the writer ended ({st}): {}",
                        std::fs::read_to_string(wdir.join("err")).unwrap_or_default()
                    ));
                }
                if count() > at_kill + 2 {
                    Ok(())
                } else {
                    Err(format!("{} lines", count()))
                }
            },
        );
        pause = t.elapsed();
        std::fs::write(&stop_file, b"").map_err(|e| e.to_string())?;
        let wst = writer
            .take()
            .unwrap()
            .wait()
            .map_err(|e| e.to_string())?;
        if !wst.success() {
            return Err(format!(
                "the writer saw an error across the node plugin pod's deletion: {}",
                std::fs::read_to_string(wdir.join("err")).unwrap_or_default()
            ));
        }
        let synced = count();
        let text = std::fs::read_to_string(&app).map_err(|e| e.to_string())?;
        let lines: Vec<&str> = text.lines().collect();
        if (lines.len() as u64) < synced {
            return Err(format!("{} lines read back, {synced} fsynced", lines.len()));
        }
        for (i, l) in lines.iter().enumerate() {
            if *l != format!("{:08}", i + 1) {
                return Err(format!("line {} reads {l:?}", i + 1));
            }
        }
        let new_log = std::fs::read_to_string(&restarted.as_ref().unwrap().log).unwrap_or_default();
        if !new_log.contains("took the volume's descriptors back from the holder") {
            let records: String = std::fs::read_dir(&state_vols)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect();
            return Err(format!(
                "the new node plugin pod did not take the descriptors from the holder (writer at {at_kill} lines when the old pod was killed, {synced} at the end; records {records}):\n{new_log}"
            ));
        }
        let mut node = pb::node_client::NodeClient::new(
            alces_csi::uds::connect(node_sock.clone())
                .await
                .map_err(|e| format!("the new node plugin pod's socket: {e}"))?,
        );
        node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            target_path: target.clone(),
        })
        .await
        .map_err(|s| format!("NodeUnpublishVolume: {s}"))?;
        node.node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.clone(),
        })
        .await
        .map_err(|s| format!("NodeUnstageVolume: {s}"))?;
        Ok::<_, String>(st)
    });
    let stats = stats.unwrap_or_else(|e| {
        let more: String = restarted
            .iter()
            .chain(std::iter::once(&holder_pod))
            .map(|p| format!("\n--- {} log:\n{}", p.name, p.log_tail()))
            .collect();
        panic!("a volume through the CSI pods: {e}{}{more}", csi_logs())
    });
    println!("FIGURE k8s node plugin pod killed, holder pod alive: from the kill to the writer's third fsync through the new pod's daemon: {pause:?} (the new pod's start included)");
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == alces_csi::pb::volume_usage::Unit::Bytes as i32);
    assert_eq!(
        bytes.map(|u| u.total),
        Some(64 << 20),
        "the mounted volume's size in the node plugin pod: {stats:?}"
    );
    assert!(
        stats.volume_condition.as_ref().is_none_or(|c| !c.abnormal),
        "volume condition: {stats:?}"
    );
    drop(writer);
    drop(restarted);
    drop(holder_pod);
    drop(csi_pods);
    drop(pods);
}

/// `../shared/k8s` beside the workspace (or `$ALCES_SHARED_DIR/k8s`).
fn shared_k8s_dir() -> PathBuf {
    std::env::var_os("ALCES_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"))
        .join("k8s")
}

/// The kubectl of `../shared/k8s` (a kube-apiserver with RBAC and the CRD
/// server), or why there is none.
fn shared_k8s() -> Result<PathBuf, String> {
    let up = shared_k8s_dir().join("up");
    let bins = std::env::var_os("ALCES_ENVTEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/alces-envtest"))
        .join("bin");
    if !up.is_file() || !bins.join("kube-apiserver").is_file() || !bins.join("kubectl").is_file() {
        return Err(format!(
            "{} or the envtest binaries in {} are missing (../shared/k8s/build --with-crd-server)",
            up.display(),
            bins.display()
        ));
    }
    Ok(bins.join("kubectl"))
}

/// The chart's operator container, started as its pod would be (in-cluster
/// configuration: the service account's token and the API server's address),
/// reconciles an AlcesCluster on a real API server with RBAC using only the
/// chart's RBAC: every object is made, the status is written, the Lease is
/// taken, nothing is forbidden.
#[test]
fn operator_runs_with_the_charts_rbac() {
    if !is_root() {
        println!("SKIPPED: running pods like a kubelet needs root (namespaces, mounts, chroot)");
        return;
    }
    let kubectl = match shared_k8s() {
        Ok(k) => k,
        Err(why) if std::env::var_os("ALCES_REQUIRE_ENVTEST").is_none() => {
            println!("SKIPPED: {why}");
            return;
        }
        Err(why) => panic!("ALCES_REQUIRE_ENVTEST is set but {why}"),
    };
    let work = tempfile::Builder::new()
        .prefix("alces-k8s-operator")
        .tempdir_in("/tmp")
        .unwrap();
    let state = work.path().join("envtest");
    let up = shared_k8s_dir().join("up");
    sh(&format!(
        "{} {} --with-crd-server alces.io/v1alpha1 >/dev/null 2>{}.log </dev/null",
        up.display(),
        state.display(),
        state.display()
    ))
    .expect("../shared/k8s/up");
    struct Down(PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = sh(&format!(
                "{} {} >/dev/null 2>&1 </dev/null",
                shared_k8s_dir().join("down").display(),
                self.0.display()
            ));
        }
    }
    let _down = Down(state.clone());
    let kc = state.join("kubeconfig");
    let k = |args: &str| {
        sh(&format!(
            "{} --kubeconfig {} {args}",
            kubectl.display(),
            kc.display()
        ))
    };
    k("create namespace alces").unwrap();
    k("create namespace storage").unwrap();
    k(&format!(
        "apply --server-side --validate=false -f {}/crds/",
        workspace().display()
    ))
    .unwrap();
    until(
        "the CRD served",
        Duration::from_secs(60),
        String::new,
        || k("get alcesclusters -A").map(|_| ()),
    );
    // The chart's objects (the operator watching one namespace, the
    // narrowest RBAC; no CSI, which needs no API server here).
    let (repo, tag) = IMAGE.rsplit_once(':').unwrap();
    let rendered = work.path().join("chart.yaml");
    sh(&format!(
        "cd {} && helm template alces charts/alces --namespace alces --set image.repository={repo} --set image.tag={tag} \
         --set operator.watchNamespace=storage --set operator.replicas=1 --set csi.enabled=false --set storageClass.enabled=false > {}",
        workspace().display(),
        rendered.display()
    ))
    .unwrap();
    k(&format!("apply --validate=false -f {}", rendered.display())).unwrap();
    let chart: Vec<Value> = std::fs::read_to_string(&rendered)
        .unwrap()
        .split("\n---")
        .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
        .filter(|v| v.is_object())
        .collect();
    let deploy = chart
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "alces-operator")
        .expect("the operator Deployment");
    let sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    // The token a kubelet would mount (a 1.20 API server keeps it in a Secret).
    let token_dir = work.path().join("sa");
    std::fs::create_dir_all(&token_dir).unwrap();
    let token = until(
        "the service account's token",
        Duration::from_secs(30),
        String::new,
        || {
            let name = k(&format!(
                "-n alces get sa {sa} -o jsonpath={{.secrets[0].name}}"
            ))?;
            if name.trim().is_empty() {
                return Err("no token Secret yet".into());
            }
            k(&format!(
                "-n alces get secret {} -o jsonpath={{.data.token}}",
                name.trim()
            ))
        },
    );
    sh(&format!(
        "echo {} | base64 -d > {d}/token; echo -n alces > {d}/namespace; \
         {kubectl} --kubeconfig {kc} config view --raw -o jsonpath='{{.clusters[0].cluster.certificate-authority-data}}' | base64 -d > {d}/ca.crt",
        token.trim(),
        d = token_dir.display(),
        kubectl = kubectl.display(),
        kc = kc.display()
    ))
    .unwrap();
    let server = k("config view -o jsonpath={.clusters[0].cluster.server}").unwrap();
    let port = server.trim().rsplit(':').next().unwrap().to_string();
    let mut kubelet = Kubelet {
        rootfs: work.path().join("rootfs"),
        work: work.path().to_path_buf(),
        node_root: work.path().join("node"),
        net: Net::new().expect("network namespaces"),
        next: 0,
    };
    sh(&format!(
        "{}/image/build-oci --profile dev --no-build --rootfs-only {}",
        workspace().display(),
        kubelet.rootfs.display()
    ))
    .expect("image/build-oci --rootfs-only");
    let c = &alces_containers(deploy)[0];
    let p = PodSpec {
        name: "alces-operator-7d9f-x1",
        namespace: "alces",
        spec: &deploy["spec"]["template"]["spec"],
        container: c,
        claims: &[],
        host_network: true,
        extra_mounts: vec![(
            token_dir.clone(),
            "/var/run/secrets/kubernetes.io/serviceaccount".into(),
        )],
        extra_env: vec![
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), port),
        ],
    };
    let empty = BTreeMap::new();
    let mut pod = kubelet
        .start(&p, &empty, &empty, "127.0.0.1 localhost\n")
        .unwrap_or_else(|e| panic!("{e}"));
    until(
        "the operator's probes",
        Duration::from_secs(30),
        String::new,
        || probe_ok(&mut pod, c),
    );
    let mut cluster = serde_json::to_value(sample_cluster()).unwrap();
    cluster["metadata"] = json!({ "name": "demo", "namespace": "storage" });
    let f = work.path().join("cluster.json");
    std::fs::write(&f, cluster.to_string()).unwrap();
    k(&format!("apply --validate=false -f {}", f.display())).unwrap();
    let log = || format!("\n--- operator log:\n{}", pod.log_tail());
    until(
        "the operator makes every object of the cluster",
        Duration::from_secs(60),
        log,
        || {
            let have = k("-n storage get statefulsets,services,configmaps,secrets -o name")?;
            let want = [
                "statefulset.apps/demo-metadata",
                "statefulset.apps/demo-cs-hdd",
                "statefulset.apps/demo-cs-ssd",
                "service/demo-master",
                "service/demo-metadata",
                "service/demo-chunkservers",
                "configmap/demo-metadata",
                "configmap/demo-chunkserver",
                "secret/demo-secret",
            ];
            let missing: Vec<_> = want
                .iter()
                .filter(|w| !have.lines().any(|l| l == **w))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?}"))
            }
        },
    );
    until(
        "the operator writes the status",
        Duration::from_secs(60),
        log,
        || {
            let g = k("-n storage get alcescluster demo -o jsonpath={.status.observedGeneration}")?;
            if g.trim() == "1" {
                Ok(())
            } else {
                Err(format!("observedGeneration '{g}'"))
            }
        },
    );
    let holder = k("-n alces get lease alces-operator -o jsonpath={.spec.holderIdentity}").unwrap();
    assert_eq!(
        holder.trim(),
        "alces-operator-7d9f-x1",
        "the Lease is held by the pod (POD_NAME)"
    );
    let text = std::fs::read_to_string(&pod.log).unwrap_or_default();
    assert!(
        !text.contains("forbidden"),
        "the operator was refused something by the chart's RBAC:{}",
        log()
    );
}
