"""Checks what `helm template` rendered from charts/alces beyond the API schemas.

Usage: check_rendered.py RENDERED.yaml CASE [CRD_DIR]
       check_rendered.py EXAMPLE.yaml examples [CRD_DIR]

CASE names the values file the objects were rendered with (defaults, hostpath-disks,
pvc-disks, no-storageclass, custom-images); the checks common to every case run for
all of them, and a few are specific to one case. With CRD_DIR, every custom resource
whose CRD is in it is validated against that CRD's openAPIV3Schema. Prints one line per
failed check and exits 1 if any failed.
"""

import pathlib
import sys

import jsonschema
import yaml

RECOMMENDED = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "helm.sh/chart",
]

failures = []


def check(ok, message):
    if not ok:
        failures.append(message)


def containers(obj):
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def strict(schema):
    """The CRD schema as the API server applies it to fields: an unknown field is an
    error here (the server would drop it silently), except where the schema keeps
    unknown fields."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


def main():
    rendered, case = sys.argv[1], sys.argv[2]
    crd_dir = pathlib.Path(sys.argv[3]) if len(sys.argv) > 3 else None
    objs = [o for o in yaml.safe_load_all(pathlib.Path(rendered).read_text()) if o]
    if case == "examples":
        # Hand-written examples: only their custom resources against the CRDs.
        check_crds(objs, crd_dir)
        report(case)
    kinds = {}
    for o in objs:
        kinds.setdefault(o["kind"], []).append(o)
        name = f'{o["kind"]}/{o["metadata"]["name"]}'
        if o["kind"] != "CustomResourceDefinition":
            labels = o["metadata"].get("labels", {})
            for label in RECOMMENDED:
                check(label in labels, f"{name} has no label {label}")

    # Privileged: only the node plugin's alces-csi container; Bidirectional only there.
    privileged = []
    for o in objs:
        for c in containers(o):
            sc = c.get("securityContext", {})
            where = f'{o["kind"]}/{o["metadata"]["name"]}:{c["name"]}'
            if sc.get("privileged"):
                privileged.append(where)
            else:
                check(sc.get("allowPrivilegeEscalation") is False, f"{where} may escalate privileges")
                check(sc.get("readOnlyRootFilesystem") is True, f"{where} has a writable root filesystem")
                check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{where} keeps capabilities")
                for m in c.get("volumeMounts", []):
                    check(m.get("mountPropagation") != "Bidirectional",
                          f"{where} has Bidirectional propagation without being privileged")
            check("resources" in c and c["resources"].get("requests"), f"{where} has no resource requests")
    if "DaemonSet" in kinds:
        check(len(privileged) == 1 and privileged[0].endswith("-csi-node:alces-csi"),
              f"privileged containers should be exactly the node plugin's alces-csi, found {privileged}")
        ds = [d for d in kinds["DaemonSet"] if d["metadata"]["name"].endswith("-csi-node")][0]
        plugin = [c for c in containers(ds) if c["name"] == "alces-csi"][0]
        mounts = {m["name"]: m for m in plugin["volumeMounts"]}
        check(mounts.get("kubelet-dir", {}).get("mountPropagation") == "Bidirectional",
              "the node plugin does not mount the kubelet directory with Bidirectional propagation")
        check("fuse-device" in mounts, "the node plugin does not get /dev/fuse")
        vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
        check(vols.get("fuse-device", {}).get("hostPath", {}).get("type") == "CharDevice",
              "/dev/fuse is not mounted as a CharDevice")
        # A new node plugin pod takes the running mounts over from the old one: it must
        # start before the old one stops (maxSurge, no unavailability), and see its pids.
        strategy = ds["spec"]["updateStrategy"]
        check(strategy == {"type": "OnDelete"}
              or strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
              f"an upgrade would stop a node plugin pod before its successor takes its mounts over: updateStrategy {strategy}")
        check(ds["spec"]["template"]["spec"].get("hostPID") is True,
              "the node plugin does not share the host's pids (it takes descriptors from daemons of other pods)")
        # The descriptor holder: its own DaemonSet, the host's pids, the same state
        # directory, no /dev/fuse, no privilege but CAP_SYS_PTRACE.
        holders = [d for d in kinds["DaemonSet"] if d["metadata"]["name"].endswith("-csi-holder")]
        check(len(holders) == 1, f"no descriptor holder DaemonSet: {[d['metadata']['name'] for d in kinds['DaemonSet']]}")
        for h in holders:
            spec = h["spec"]["template"]["spec"]
            check(spec.get("hostPID") is True, "the holder does not share the host's pids")
            # Replaced one node at a time, and only while a node plugin pod runs on the
            # node throughout the plugin's own roll (maxUnavailable 0): a holder and a
            # plugin pod never stop together. OnDelete would leave the DaemonSet out of
            # date after every image change, which kstatus-based waits (Helm 4's
            # --wait, Flux) wait on forever.
            check(h["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
                  or case != "defaults",
                  f"the holder's default updateStrategy should roll one node at a time: {h['spec']['updateStrategy']}")
            if h["spec"]["updateStrategy"]["type"] == "RollingUpdate":
                check(strategy.get("type") == "OnDelete"
                      or strategy.get("rollingUpdate", {}).get("maxUnavailable") == 0,
                      f"holders roll while node plugin pods may be down (plugin updateStrategy {strategy})")
            hc = [c for c in containers(h) if c["name"] == "holder"]
            check(len(hc) == 1 and hc[0]["args"][0] == "hold", "the holder does not run alces-csi hold")
            caps = hc[0]["securityContext"].get("capabilities", {})
            check(caps.get("add") == ["SYS_PTRACE"], f"the holder's capabilities should be exactly SYS_PTRACE: {caps}")
            hvols = {v["name"]: v for v in spec["volumes"]}
            check(all("fuse" not in str(v) for v in hvols.values()), "the holder gets /dev/fuse")
            check(hvols.get("state-dir", {}).get("hostPath") == vols.get("state-dir", {}).get("hostPath"),
                  "the holder and the node plugin do not share the state directory")

    # TLS: the CSI containers get ALCES_TLS_* and the client Secret as a directory
    # (no subPath, so renewals reach them), keys 0400; the chart's cluster gets
    # spec.tls. Without TLS, none of it.
    # tls: ci/tls-values.yaml (a Secret made beforehand, a client Secret, a server
    # name); cert-manager: chart-test's render with tls.certManager.enabled.
    tls_case = case in ("tls", "cert-manager")
    want_secret, want_client, want_name = (
        ("alces-tls", "alces-csi-tls", "alces.storage.internal") if case == "tls"
        else ("demo-tls", "demo-tls", None))
    for o in kinds.get("Deployment", []) + kinds.get("DaemonSet", []):
        for c in containers(o):
            if c["name"] != "alces-csi":
                continue
            where = f'{o["kind"]}/{o["metadata"]["name"]}'
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
            vols = {v["name"]: v for v in o["spec"]["template"]["spec"]["volumes"]}
            if tls_case:
                check(env.get("ALCES_TLS_CA") == "/etc/alces/tls/ca.crt"
                      and env.get("ALCES_TLS_CERT") == "/etc/alces/tls/tls.crt"
                      and env.get("ALCES_TLS_KEY") == "/etc/alces/tls/tls.key",
                      f"{where}: ALCES_TLS_CA/CERT/KEY not set to the mounted Secret: {env}")
                check(env.get("ALCES_TLS_SERVER_NAME") == want_name,
                      f"{where}: ALCES_TLS_SERVER_NAME is not tls.serverName")
                m = mounts.get("tls", {})
                check(m.get("mountPath") == "/etc/alces/tls" and "subPath" not in m and m.get("readOnly"),
                      f"{where}: the TLS Secret is not mounted read-only as a directory: {m}")
                sec = vols.get("tls", {}).get("secret", {})
                check(sec.get("secretName") == want_client and sec.get("defaultMode") == 0o400,
                      f"{where}: the TLS volume is not the client Secret with mode 0400: {sec}")
            else:
                check(not any(k.startswith("ALCES_TLS_") for k in env) and "tls" not in vols,
                      f"{where}: TLS settings without tls.enabled")
    for o in kinds.get("AlcesCluster", []):
        tls = o["spec"].get("tls")
        if tls_case:
            want = {"secretName": want_secret, "clientAuth": True}
            if want_name:
                want["serverName"] = want_name
            check(tls == want, f"the chart's AlcesCluster spec.tls is {tls}")
        else:
            check(tls is None, f"the chart's AlcesCluster has spec.tls without tls.enabled: {tls}")
    for o in kinds.get("Deployment", []):
        if o["metadata"]["name"].endswith("-operator"):
            op = [c for c in containers(o) if c["name"] == "operator"][0]
            vols = {v["name"]: v for v in o["spec"]["template"]["spec"]["volumes"]}
            check("--tls-dir=/tmp/alces-operator-tls" in op["args"]
                  and any(m["mountPath"] == "/tmp/alces-operator-tls" for m in op.get("volumeMounts", []))
                  and vols.get("tls-dir", {}).get("emptyDir", {}).get("medium") == "Memory",
                  "the operator's --tls-dir is not an in-memory emptyDir")

    for d in kinds.get("CSIDriver", []):
        check(d["spec"]["attachRequired"] is False, "CSIDriver requires attach")
        check(d["spec"]["podInfoOnMount"] is True, "CSIDriver has no pod info on mount")
        check(d["spec"]["fsGroupPolicy"] == "None",
              "CSIDriver fsGroupPolicy is not None (volume roots are 0777; File chowns shared volumes at every mount)")

    # ClusterRoles: only the ones the chart justifies.
    cluster_roles = sorted(o["metadata"]["name"].removeprefix("alces-") for o in kinds.get("ClusterRole", []))
    if case == "pvc-disks":
        check(cluster_roles == ["csi-controller", "operator-volumes"],
              f"with operator.watchNamespace the operator needs no ClusterRole but its read-only volumes one: {cluster_roles}")
        check(any(o["metadata"]["name"].endswith("-operator") and o["metadata"]["namespace"] == "alces"
                  for o in kinds.get("Role", [])), "no operator Role in the watched namespace")
    elif "ClusterRole" in kinds:
        check(cluster_roles == ["csi-controller", "operator", "operator-volumes"],
              f"unexpected ClusterRoles {cluster_roles}")

    images = [c["image"] for o in objs for c in containers(o)]
    if case == "custom-images":
        check(all(i.startswith("registry.example.com:5000/") for i in images),
              f"an image is not from the custom registry: {images}")
        alces = [c for o in objs for c in containers(o) if c["name"] in ("operator", "alces-csi", "holder")]
        check(all(c["image"].endswith("@sha256:" + "0123456789abcdef" * 4) for c in alces),
              "the Alces image is not pinned by its digest")
        check(all(c["imagePullPolicy"] == "Always" for o in objs for c in containers(o)),
              "a container does not use pullPolicy Always")
        for o in kinds["Deployment"] + kinds["DaemonSet"]:
            check(o["spec"]["template"]["spec"].get("imagePullSecrets") == [{"name": "registry-credentials"}],
                  f'{o["metadata"]["name"]} has no imagePullSecrets')
        check(all(o["metadata"].get("labels", {}).get("team") == "storage"
                  for o in objs if o["kind"] != "CustomResourceDefinition"), "commonLabels missing")

    scs = kinds.get("StorageClass", [])
    if case == "no-storageclass":
        check(not scs and not kinds.get("VolumeSnapshotClass"), "a StorageClass or VolumeSnapshotClass was made")
        check(all(c["name"] != "csi-snapshotter" for o in objs for c in containers(o)), "the snapshotter still runs")
    else:
        check(len(scs) == 1, f"expected one StorageClass, got {len(scs)}")
        for sc in scs:
            check(sc["provisioner"] == "csi.alces.io", "the StorageClass names another provisioner")
            p = sc["parameters"]
            check(all(isinstance(v, str) for v in p.values()), "StorageClass parameters must be strings")
            default = sc["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class")
            check((default == "true") == (case == "hostpath-disks"), f"default-class annotation is {default}")
            # The provisioner (with the controller's account) reads the Secret the class names.
            secret_ns = p["csi.storage.k8s.io/provisioner-secret-namespace"]
            check(any(r["metadata"]["namespace"] == secret_ns and r["metadata"]["name"].endswith("-csi-controller-secrets")
                      for r in kinds.get("Role", [])),
                  f"the CSI controller may not read Secrets in {secret_ns}, where the StorageClass's Secret is")
            if case == "cluster-secret":
                check(p.get("csi.storage.k8s.io/node-stage-secret-name") == p["csi.storage.k8s.io/provisioner-secret-name"],
                      "without volume credentials nodes must get the cluster secret")
                check(not any(r["metadata"]["name"].endswith("-csi-controller-volume-secrets") for r in kinds.get("Role", [])),
                      "a Role for volume Secrets although volume credentials are off")
                continue
            # Nodes get each volume's own credential Secret, never the cluster secret.
            check(p.get("csi.storage.k8s.io/node-stage-secret-name") == "alces-vol-${pv.name}",
                  f"the node-stage secret is not the volume's own: {p.get('csi.storage.k8s.io/node-stage-secret-name')}")
            check("csi.storage.k8s.io/node-publish-secret-name" not in p, "nodes are handed a secret at publish")
            vol_ns = p.get("csi.storage.k8s.io/node-stage-secret-namespace")
            roles = [r for r in kinds.get("Role", []) if r["metadata"]["name"].endswith("-csi-controller-volume-secrets")]
            check(len(roles) == 1 and roles[0]["metadata"]["namespace"] == vol_ns,
                  f"the CSI controller may not write the volumes' Secrets in {vol_ns}")
            for r in roles:
                check(r["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch", "delete"]}],
                      f"the volume Secrets Role grants {r['rules']}")
            args = [a for o in kinds.get("Deployment", []) for c in containers(o) if c["name"] == "alces-csi" for a in c.get("args", [])]
            check(f"--volume-secret-namespace={vol_ns}" in args, f"the CSI controller does not write volume Secrets to {vol_ns}: {args}")
            if case == "pvc-disks":
                check(p["cluster"] == "alces/shared" and p["goal"] == "3", f"StorageClass parameters {p}")
                check(p["csi.storage.k8s.io/provisioner-secret-name"] == "shared-secret", "wrong secret")

    clusters = kinds.get("AlcesCluster", [])
    check(bool(clusters) == (case in ("hostpath-disks", "pvc-disks", "tls", "cert-manager")), f"{len(clusters)} AlcesClusters rendered")
    for c in clusters:
        check(c["spec"].get("image", "").startswith("ghcr.io/alces/alces:"), "the AlcesCluster has not the chart's image")
    check_crds(objs, crd_dir)
    report(case)


def report(case):
    for f in failures:
        print(f"FAIL [{case}]: {f}")
    sys.exit(1 if failures else 0)


def check_crds(objs, crd_dir):
    """Validates every custom resource whose CRD is in crd_dir against its spec schema."""
    if crd_dir is not None:
        schemas = {}
        for f in sorted(crd_dir.glob("*.yaml")):
            for crd in yaml.safe_load_all(f.read_text()):
                if crd and crd.get("kind") == "CustomResourceDefinition":
                    for v in crd["spec"]["versions"]:
                        key = (f'{crd["spec"]["group"]}/{v["name"]}', crd["spec"]["names"]["kind"])
                        schemas[key] = strict(v["schema"]["openAPIV3Schema"]["properties"]["spec"])
        for o in objs:
            schema = schemas.get((o["apiVersion"], o["kind"]))
            if schema is not None:
                try:
                    jsonschema.validate(o["spec"], schema)
                except jsonschema.ValidationError as e:
                    check(False, f'{o["kind"]}/{o["metadata"]["name"]} is refused by its CRD at spec{"".join("." + str(p) for p in e.absolute_path)}: {e.message}')


if __name__ == "__main__":
    main()
