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
            if case == "pvc-disks":
                check(p["cluster"] == "alces/shared" and p["goal"] == "3", f"StorageClass parameters {p}")
                check(p["csi.storage.k8s.io/provisioner-secret-name"] == "shared-secret", "wrong secret")

    clusters = kinds.get("AlcesCluster", [])
    check(bool(clusters) == (case in ("hostpath-disks", "pvc-disks")), f"{len(clusters)} AlcesClusters rendered")
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
