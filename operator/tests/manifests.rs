//! The generated CRD is current, and the builders' manifests match the
//! golden files (regenerate both with `ALCES_UPDATE_GOLDEN=1 cargo test -p
//! alces-operator --test manifests` after an intended change, and review the diff).

use std::path::PathBuf;

use alces_operator::builders;
use alces_operator::crd::AlcesCluster;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(path: PathBuf, want: &str) {
    if std::env::var_os("ALCES_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, want).expect("write golden");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is stale: regenerate it (ALCES_UPDATE_GOLDEN=1 cargo test -p alces-operator --test manifests, or for the CRD `cargo run -p alces-operator --bin crdgen > crds/alces.io_alcesclusters.yaml`) and review the diff",
        path.display()
    );
}

#[test]
fn crds_folder_is_generated_from_the_rust_types() {
    check(
        root().join("..").join(alces_operator::crdgen::CRD_FILE),
        &alces_operator::crdgen::yaml(),
    );
}

fn sample() -> AlcesCluster {
    let y = r#"
apiVersion: alces.io/v1alpha1
kind: AlcesCluster
metadata: { name: demo, namespace: storage, uid: 0000-1111 }
spec:
  image: registry.example/alces:1.0
  imagePullPolicy: IfNotPresent
  master:
    resources: { requests: { memory: 4Gi, cpu: "1" } }
    tuning: { chunkserverTimeoutSeconds: 30, chunkserverDisconnectMs: 2500, replicationRate: 64 }
  chunkservers:
    pools:
      - name: ssd
        replicas: 3
        failureDomain: zone-a
        placement: { nodeSelector: { disk: ssd } }
        disks:
          - { name: d0, volumeClaim: { size: 100Gi, storageClassName: fast } }
          - { name: d1, hostPath: /mnt/alces }
  podOverrides:
    metadata: { annotations: { example.com/team: storage } }
  envOverrides:
    - { name: RUST_LOG, value: debug }
"#;
    serde_saphyr::from_str(y).expect("sample cluster parses")
}

/// A builder's manifest survives a round trip through the typed Kubernetes
/// object: it holds no field the API does not know.
fn typed_round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) {
    let t: T = serde_json::from_value(v.clone()).expect("manifest parses as its Kubernetes type");
    let back = serde_json::to_value(&t).expect("serializes");
    assert_eq!(
        &back, v,
        "fields lost in a round trip through the typed object"
    );
}

#[test]
fn manifests_match_the_golden_files_and_the_kubernetes_types() {
    let c = sample();
    let md = builders::metadata_env(&c);
    let cs = builders::chunkserver_env(&c);
    let objects = vec![
        ("secret", builders::secret(&c, "s3cret")),
        (
            "metadata-configmap",
            builders::config_map(&c, "demo-metadata", builders::METADATA, &md),
        ),
        (
            "chunkserver-configmap",
            builders::config_map(&c, "demo-chunkserver", builders::CHUNKSERVER, &cs),
        ),
        (
            "metadata-headless-service",
            builders::headless_service(
                &c,
                "demo-metadata",
                builders::METADATA,
                builders::METALOGGER_PORT,
            ),
        ),
        (
            "master-service",
            builders::master_service(&c, Some("demo-metadata-1")),
        ),
        (
            "metadata-statefulset",
            builders::metadata_statefulset(&c, "h1"),
        ),
        (
            "pool-statefulset",
            builders::pool_statefulset(&c, &c.spec.chunkservers.pools[0], 4, "h2"),
        ),
        ("pdb-metadata", builders::pdbs(&c, "policy/v1").remove(0)),
    ];
    typed_round_trip::<Secret>(&objects[0].1);
    typed_round_trip::<ConfigMap>(&objects[1].1);
    typed_round_trip::<Service>(&objects[3].1);
    typed_round_trip::<Service>(&objects[4].1);
    typed_round_trip::<StatefulSet>(&objects[5].1);
    typed_round_trip::<StatefulSet>(&objects[6].1);
    typed_round_trip::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(&objects[7].1);
    let mut all = String::new();
    for (name, v) in &objects {
        all.push_str(&format!(
            "# {name}\n---\n{}",
            serde_saphyr::to_string(v).expect("yaml")
        ));
    }
    check(root().join("tests/golden/demo.yaml"), &all);

    // What the golden file shows, asserted where it matters.
    let svc = &objects[4].1;
    assert_eq!(
        svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"],
        "demo-metadata-1"
    );
    let pool = &objects[6].1;
    assert_eq!(pool["spec"]["replicas"], 4);
    assert_eq!(pool["spec"]["updateStrategy"]["type"], "OnDelete");
    let mounts = &pool["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
    assert_eq!(
        mounts[1]["subPathExpr"], "$(POD_NAME)",
        "hostPath disks get a per-pod subdirectory"
    );
    assert_eq!(
        pool["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
        "fast"
    );
    // Least privilege: every daemon pod runs as the image's user; the hostPath
    // disk is given to it by an init container that is root with CHOWN only.
    for sts in [&objects[5].1, pool] {
        let pod = &sts["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], builders::RUN_AS);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let c = &pod["containers"][0]["securityContext"];
        assert_eq!(c["allowPrivilegeEscalation"], false);
        assert_eq!(c["readOnlyRootFilesystem"], true);
        assert_eq!(c["capabilities"], serde_json::json!({ "drop": ["ALL"] }));
    }
    assert!(
        objects[5].1["spec"]["template"]["spec"]["initContainers"].is_null(),
        "metadata on claims needs no init step (fsGroup gives them)"
    );
    let init = &pool["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(init.as_array().map(Vec::len), Some(1));
    assert_eq!(init[0]["name"], builders::DATA_OWNER);
    assert_eq!(
        init[0]["command"],
        serde_json::json!(["alces", "chown-data", "--owner", "65532:65532", "/data/d1"]),
        "only the hostPath disk is given, not the claim"
    );
    assert_eq!(
        init[0]["securityContext"]["capabilities"],
        serde_json::json!({ "drop": ["ALL"], "add": ["CHOWN"] })
    );
    assert_eq!(
        init[0]["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        init[0]["volumeMounts"],
        serde_json::json!([mounts[1]]),
        "the init step mounts the hostPath disk as the daemon does"
    );
    let md_sts = &objects[5].1;
    assert_eq!(
        md_sts["spec"]["replicas"], 3,
        "1 master + 2 metaloggers by default"
    );
    assert_eq!(
        md_sts["spec"]["template"]["metadata"]["annotations"]["example.com/team"],
        "storage"
    );
    let env = md_sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env");
    assert_eq!(
        env.last().expect("env")["name"],
        "RUST_LOG",
        "envOverrides come last"
    );
    assert_eq!(
        md["ALCES_SYNC_METALOGGERS"], "1",
        "RPO 0 by default with metaloggers"
    );
    assert_eq!(md["ALCES_CHUNKSERVER_TIMEOUT"], "30");
    for (_, v) in &objects {
        let owner = &v["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["controller"].as_bool()),
            (Some("AlcesCluster"), Some(true))
        );
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "alces-operator"
        );
    }
}
