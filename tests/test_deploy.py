"""deploy/ and the Dockerfile: every overlay rendered by real kustomize (kubectl), every
Kubernetes object validated against the real schemas, and the invariants that keep an
injector from hurting its cluster asserted one by one."""

from __future__ import annotations

import atexit
import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.support import validate_k8s
from tests.support import venv_tool as _tool
from webhook.cli import build_parser
from webhook.dataplane import FLAVOURS, config_maps
from webhook.loading import parse_policy
from webhook.serve.app import AppState, create_app

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "deploy"
IMAGE = "registry.example.com/platform/mesh-injector"


def _with_image(deploy: Path, **image: str) -> Path:
    """``deploy`` with the base's image set as ``kustomize edit set image`` writes it."""
    kustomization = deploy / "base" / "kustomization.yaml"
    doc = yaml.safe_load(kustomization.read_text())
    assert doc["images"] == [{"name": "mesh-injector"}], "the base ships with no image set"
    doc["images"] = [{"name": "mesh-injector", **image}]
    kustomization.write_text(yaml.safe_dump(doc, sort_keys=False))
    return deploy


def _installable() -> Path:
    """A copy of deploy/ as a user has it after setting the image they pushed."""
    root = Path(tempfile.mkdtemp(prefix="mesh-injector-deploy-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    shutil.copytree(SOURCE, root / "deploy")
    return _with_image(root / "deploy", newName=IMAGE, newTag="0.1.0")


DEPLOY = _installable()
OVERLAYS = [
    "base",
    "overlays/cert-manager",
    "overlays/fail-closed",
    "overlays/auto-inject",
    "overlays/self-managed",
    "overlays/usage-metrics-api",
    "overlays/usage-prometheus",
    # the README's combinations of components with either certificate overlay
    "examples/self-managed-auto-inject",
    "examples/cert-manager-prometheus-fail-closed",
    "examples/self-managed-ebpf-linkerd",
]
SYSTEM = {"kube-system", "kube-public", "kube-node-lease"}


def render(overlay: str) -> list[dict]:
    out = subprocess.run(
        [_tool("kubectl"), "kustomize", str(DEPLOY / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def one(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request):
    return request.param, render(request.param)


def test_every_object_validates(rendered):
    _, objs = rendered
    checked = []
    for obj in objs:
        if obj["apiVersion"].startswith("cert-manager.io/"):
            continue  # a CRD: not in the Kubernetes schemas; checked in test_cert_manager_overlay
        validate_k8s(obj)  # raises, naming the field, when the schema refuses it
        checked.append(obj["kind"])
    assert {"Namespace", "ServiceAccount", "Service", "Deployment", "MutatingWebhookConfiguration"} <= set(
        checked
    ), checked
    # and the same check refuses what the API server would: the Deployment, one field broken
    broken = copy.deepcopy(one(objs, "Deployment"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="'two' is not of type 'integer'"):
        validate_k8s(broken)


def test_webhook_configuration_cannot_hurt_the_cluster(rendered):
    overlay, objs = rendered
    mwc = one(objs, "MutatingWebhookConfiguration")
    svc = one(objs, "Service")
    namespace = one(objs, "Namespace")["metadata"]["name"]
    assert mwc["webhooks"], "no webhooks"
    for hook in mwc["webhooks"]:
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "None"
        assert hook["timeoutSeconds"] <= 5
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["failurePolicy"] == ("Fail" if overlay.endswith("fail-closed") else "Ignore")
        assert hook["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ]
        excluded = next(
            e
            for e in hook["namespaceSelector"]["matchExpressions"]
            if e["key"] == "kubernetes.io/metadata.name"
        )
        assert excluded["operator"] == "NotIn" and set(excluded["values"]) >= SYSTEM | {namespace}
        ref = hook["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"], ref["path"]) == (svc["metadata"]["name"], namespace, "/mutate")
        assert ref["port"] in [p["port"] for p in svc["spec"]["ports"]] and ref["port"] == 443
    if overlay.endswith("auto-inject"):
        assert len(mwc["webhooks"]) == 1
    else:  # opt-in: namespace label, or pod label; exclusive, so a pod is sent once
        ns_hook, pod_hook = mwc["webhooks"]
        assert {"key": "mesh-injector.io/inject", "operator": "In", "values": ["enabled"]} in ns_hook[
            "namespaceSelector"
        ]["matchExpressions"]
        assert {"key": "mesh-injector.io/inject", "operator": "NotIn", "values": ["enabled"]} in pod_hook[
            "namespaceSelector"
        ]["matchExpressions"]
        assert pod_hook["objectSelector"]["matchExpressions"] == [
            {"key": "mesh-injector.io/inject", "operator": "In", "values": ["enabled"]}
        ]


def test_rbac_is_least_privilege(rendered):
    _, objs = rendered
    roles = [o for o in objs if o["kind"] in ("Role", "ClusterRole")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"wildcard in {field}: {rule}"
            verbs = set(rule["verbs"])
            if "mutatingwebhookconfigurations" in rule["resources"]:
                assert rule["resourceNames"] == ["mesh-injector"] and verbs <= {"get", "patch"}
            elif "configmaps" in rule["resources"]:
                # the flavours' control-plane ConfigMaps, by name; no other ConfigMap is readable
                assert rule["resources"] == ["configmaps"]
                assert rule["resourceNames"] == [
                    "linkerd-config",
                    "linkerd-identity-trust-roots",
                    "istio",
                    "istio-sidecar-injector",
                ], rule
                for name in FLAVOURS:
                    policy = parse_policy(f"proxy: {{flavour: {name}, image: x, initImage: y}}", "test")
                    assert {n for _, n in config_maps(policy)} <= set(rule["resourceNames"]), name
                assert verbs <= {"get", "list", "watch"}
            elif rule["resources"] == ["secrets"]:
                # only the certificate Job, only in its namespace, only its own Secrets
                assert role["kind"] == "Role"
                assert verbs == {"create"} or (verbs <= {"get", "update"} and rule.get("resourceNames"))
            else:
                assert verbs <= {"get", "list", "watch"}, rule
    dep = one(objs, "Deployment")
    sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
    server_bindings = [
        b for b in objs if b["kind"] == "ClusterRoleBinding" and b["subjects"][0]["name"] == sa
    ]
    (binding,) = server_bindings
    server_role = next(r for r in roles if r["metadata"]["name"] == binding["roleRef"]["name"])
    assert not any("secrets" in rule["resources"] for rule in server_role["rules"]), (
        "the server never writes Secrets"
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa, "namespace": dep["metadata"]["namespace"]}
    ]


def test_deployment_is_highly_available_hardened_and_matches_the_server(rendered):
    _, objs = rendered
    dep = one(objs, "Deployment")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} >= {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert spec["template"]["metadata"]["labels"]["mesh-injector.io/inject"] == "disabled"
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] >= 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert "cpu" in container["resources"]["requests"] and "cpu" not in container["resources"].get(
        "limits", {}
    )

    # the arguments are ones the real CLI accepts, and the ports and probes are the server's
    args = build_parser().parse_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (
        args.func.__name__ == "cmd_serve"
        and ports["https"] == args.port
        and ports["metrics"] == args.metrics_port
    )
    svc = one(objs, "Service")
    https = next(p for p in svc["spec"]["ports"] if p["port"] == 443)
    assert https["targetPort"] == "https"
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    routes = {r.path for r in create_app(AppState(cluster=None, policy=None)).routes}  # type: ignore[arg-type]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes and get["port"] == "https" and get["scheme"] == "HTTPS"
    # the mounted policy is a valid policy naming this namespace as the injector's
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    cm_name = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == "policy")
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name)
    assert args.policy == f"{mounts['policy']}/policy.yaml"
    policy = parse_policy(cm["data"]["policy.yaml"], "deploy policy")
    assert policy.injector_namespace == dep["metadata"]["namespace"]
    assert args.tls_cert.startswith(mounts["tls"])


def test_cert_manager_overlay():
    objs = render("overlays/cert-manager")
    mwc = one(objs, "MutatingWebhookConfiguration")
    ns, name = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    certs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Certificate"}
    serving = certs[name]
    assert serving["metadata"]["namespace"] == ns
    dep = one(objs, "Deployment")
    secret = next(
        v["secret"]["secretName"] for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"
    )
    assert serving["spec"]["secretName"] == secret
    svc = one(objs, "Service")["metadata"]["name"]
    assert set(serving["spec"]["dnsNames"]) >= {
        svc,
        f"{svc}.{ns}",
        f"{svc}.{ns}.svc",
        f"{svc}.{ns}.svc.cluster.local",
    }
    assert serving["spec"]["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
    issuers = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Issuer"}
    ca_issuer = issuers[serving["spec"]["issuerRef"]["name"]]
    assert certs[ca_issuer["spec"]["ca"]["secretName"]]["spec"]["isCA"] is True


def test_self_managed_overlay():
    objs = render("overlays/self-managed")
    dep = one(objs, "Deployment")
    job = one(objs, "Job")
    mwc = one(objs, "MutatingWebhookConfiguration")
    parser = build_parser()
    server = parser.parse_args(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    (certs_container,) = job["spec"]["template"]["spec"]["containers"]
    certs = parser.parse_args(certs_container["args"])
    assert certs.func.__name__ == "cmd_certs" and certs.in_cluster
    namespace, _, secret = certs.secret.partition("/")
    volumes = dep["spec"]["template"]["spec"]["volumes"]
    assert next(v["secret"]["secretName"] for v in volumes if v["name"] == "tls") == secret
    assert namespace == dep["metadata"]["namespace"] and certs.namespace == namespace
    assert certs.webhook_config == server.webhook_config == mwc["metadata"]["name"]
    assert Path(server.ca_bundle).parent == Path(server.tls_cert).parent
    assert "cert-manager.io/inject-ca-from" not in (mwc["metadata"].get("annotations") or {})
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["mesh-injector.io/inject"] == "disabled"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] and certs_container["securityContext"][
        "capabilities"
    ] == {"drop": ["ALL"]}
    role = next(o for o in objs if o["kind"] == "Role")
    named = next(r for r in role["rules"] if r.get("resourceNames"))
    assert set(named["resourceNames"]) == {secret, f"{secret}-ca"}


def test_auto_inject_overlay_turns_on_inject_by_default():
    objs = render("overlays/auto-inject")
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    assert parse_policy(cm["data"]["policy.yaml"]).inject_by_default is True


def _stages(text: str) -> list[list[str]]:
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_usage_overlays_choose_one_source():
    parser = build_parser()
    for overlay, check in (
        (
            "overlays/usage-metrics-api",
            lambda a: a.metrics_api and not a.prometheus and a.usage_interval == 60,
        ),
        (
            "overlays/usage-prometheus",
            lambda a: a.prometheus.startswith("http://") and not a.metrics_api and a.usage_interval == 300,
        ),
    ):
        dep = one(render(overlay), "Deployment")
        args = parser.parse_args(dep["spec"]["template"]["spec"]["containers"][0]["args"])
        assert check(args) and args.in_cluster and not args.usage, overlay


def test_dockerfile():
    text = (REPO / "Dockerfile").read_text()
    out = subprocess.run(
        [_tool("hadolint"), "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    stages = _stages(text)
    assert len(stages) >= 2, "multi-stage"
    final = stages[-1]
    pinned = r"FROM python:3\.\d+(\.\d+)?-slim-\w+@sha256:[0-9a-f]{64}"
    assert re.match(pinned, final[0]), "a small official Python base, pinned by digest"
    assert stages[0][0].split()[1] == final[0].split()[1], "both stages on the same base"
    assert any(line.startswith("HEALTHCHECK ") for line in final)
    build = stages[0]
    installs = [i for i, line in enumerate(build) if "pip install" in line]
    assert installs and all("--only-binary :all:" in build[i] for i in installs), "wheels only"
    source = build.index("COPY webhook ./webhook")
    assert installs[0] < source < installs[-1], "dependencies in a layer before the source"
    user = next(line for line in final if line.startswith("USER "))
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric non-root user"
    assert final.index(user) > max(
        i for i, line in enumerate(final) if line.startswith(("COPY", "RUN", "ENV"))
    )
    assert 'ENTRYPOINT ["mesh-injector"]' in final and 'CMD ["serve"]' in final
    assert not any(re.search(r"\b(gcc|build-essential|apt-get)\b", line) for line in final), "no build tools"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", "tests", ".venv"} <= set(ignored)
    # what the build stage copies is exactly what the package needs to install
    copied = [src for line in stages[0] if line.startswith("COPY ") for src in line.split()[1:-1]]
    assert sorted(copied) == ["README.md", "policies", "pyproject.toml", "webhook"]


def test_components_combine_with_either_certificate_overlay():
    """The optional parts are kustomize Components: each example gets every component's
    effect on top of its certificate overlay, and nothing of the other overlay."""
    parser = build_parser()
    objs = render("examples/self-managed-auto-inject")
    dep = one(objs, "Deployment")
    args = parser.parse_args(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    assert args.webhook_config == "mesh-injector" and args.metrics_api  # self-managed + metrics
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    assert parse_policy(cm["data"]["policy.yaml"]).inject_by_default is True  # auto-inject
    hook = one(objs, "MutatingWebhookConfiguration")
    assert len(hook["webhooks"]) == 1 and "cert-manager.io/inject-ca-from" not in hook["metadata"].get(
        "annotations", {}
    )
    assert not any(o["apiVersion"].startswith("cert-manager.io/") for o in objs)
    assert any(o["kind"] == "Job" for o in objs)

    objs = render("examples/cert-manager-prometheus-fail-closed")
    dep = one(objs, "Deployment")
    args = parser.parse_args(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    assert args.prometheus.startswith("http://") and not args.webhook_config
    hook = one(objs, "MutatingWebhookConfiguration")
    assert [w["failurePolicy"] for w in hook["webhooks"]] == ["Fail", "Fail"]
    assert (
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "mesh-injector/mesh-injector-tls"
    )
    assert not any(o["kind"] == "Job" for o in objs)


@pytest.mark.parametrize("component", ["merbridge-linkerd", "merbridge-istio"])
def test_the_merbridge_components_run_what_ebpf_mode_counts(component, tmp_path):
    """Each Merbridge component is a pinned DaemonSet in CNI mode for its mesh, where the
    policy of that flavour looks for it: the pods it makes are the ones the decision counts."""
    from webhook.cluster.snapshot import redirector_from_object, redirector_selector
    from webhook.dataplane import flavour
    from webhook.modes.ebpf import serves

    work = tmp_path / "k"
    shutil.copytree(DEPLOY / "components" / component, work / component)
    (work / "kustomization.yaml").write_text(
        f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\ncomponents:\n- {component}\n"
    )
    out = subprocess.run(
        [_tool("kubectl"), "kustomize", str(work)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for obj in objs:
        validate_k8s(obj)
    ds = one(objs, "DaemonSet")
    container = ds["spec"]["template"]["spec"]["containers"][0]
    image = container["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
    name = component.removeprefix("merbridge-")
    policy = parse_policy(f"proxy: {{flavour: {name}}}")
    selector = redirector_selector(policy)
    assert ds["metadata"]["namespace"] == selector.namespace
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in selector.labels.items())
    pod = {
        "metadata": {"name": "merbridge-x", "namespace": ds["metadata"]["namespace"], "labels": labels},
        "spec": {**ds["spec"]["template"]["spec"], "nodeName": "node-1"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert selector.matches(pod)
    found = redirector_from_object(pod)
    assert found is not None
    plane = flavour(name)
    assert plane.redirect is not None
    assert serves(found[1], plane.redirect.mode, policy.interception.ebpf.redirector.require_cni_mode)
    account = one(objs, "ServiceAccount")["metadata"]["name"]
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == account
    (rule,) = one(objs, "ClusterRole")["rules"]
    assert rule == {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}


def test_a_regular_install_carries_every_subpackage(tmp_path):
    """What `pip install .` (the README's quick start, the Dockerfile) puts in site-packages
    imports: every package directory of the source is in the wheel."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    import zipfile

    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "webhook").rglob("__init__.py")}
    assert packages >= {"webhook", "webhook/dataplane", "webhook/podsecurity"}
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    assert "webhook/data/default-policy.yaml" in names


def test_a_render_before_the_image_is_set_fails_loudly():
    """No image is published: the shipped manifests name none, and rendering them as they
    are fails, saying which value is missing its tag, instead of installing a pod that
    can never pull."""
    for overlay in (
        "base",
        "overlays/cert-manager",
        "overlays/self-managed",
        "examples/self-managed-auto-inject",
    ):
        out = subprocess.run(
            [_tool("kubectl"), "kustomize", str(SOURCE / overlay)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode != 0, overlay
        assert NO_TAG in out.stderr, out.stderr


NO_TAG = "nothing selected by ConfigMap.[noVer].[noGrp]/mesh-injector-image-needs-a-tag-or-digest"


@pytest.mark.parametrize(
    ("image", "renders"),
    [
        ({"newName": "registry.example.com:5000/platform/mesh-injector"}, None),
        ({"newName": "registry.example.com:5000/platform/mesh-injector", "newTag": "0.1.0"}, ":0.1.0"),
        ({"newName": "localhost:5000/mesh-injector", "newTag": "dev"}, ":dev"),
        ({"newName": "localhost:5000/mesh-injector"}, None),
        ({"newName": "registry.example.com/platform/mesh-injector"}, None),
        ({"newName": "mesh-injector"}, None),
        ({"newName": "registry.example.com:5000/mesh-injector", "digest": "sha256:" + "cd" * 32}, "@sha256:"),
    ],
    ids=lambda v: str(v),
)
def test_the_image_check_looks_at_the_last_path_segment(image, renders, tmp_path):
    """A registry port is a ':' too: registry:5000/platform/mesh-injector has no tag, and
    used to pass the check and deploy :latest."""
    shutil.copytree(SOURCE, tmp_path / "deploy")
    _with_image(tmp_path / "deploy", **image)
    out = subprocess.run(
        [_tool("kubectl"), "kustomize", str(tmp_path / "deploy" / "overlays" / "self-managed")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if renders is None:
        assert out.returncode != 0 and NO_TAG in out.stderr, out.stderr
        return
    assert out.returncode == 0, out.stderr
    images = {
        c["image"]
        for o in yaml.safe_load_all(out.stdout)
        if o and o["kind"] in ("Deployment", "Job")
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert len(images) == 1 and next(iter(images)).startswith(image["newName"] + renders)


def _job_name(tmp_path: Path, tag: str) -> str:
    root = tmp_path / tag
    shutil.copytree(SOURCE, root)
    _with_image(root, newName=IMAGE, newTag=tag)
    out = subprocess.run(
        [_tool("kubectl"), "kustomize", str(root / "overlays" / "self-managed")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return one([d for d in yaml.safe_load_all(out.stdout) if d], "Job")["metadata"]["name"]


def test_the_certificate_job_is_named_after_the_image_it_runs(tmp_path):
    """A Job's pod template is immutable: one name per image lets `kubectl apply -k` with a
    new image create a new Job instead of failing on the old one (tests/test_deploy_upgrade.py
    applies both to a real API server)."""
    first, again, other = (
        _job_name(tmp_path, "0.1.0"),
        _job_name(tmp_path / "x", "0.1.0"),
        _job_name(tmp_path, "0.2.0"),
    )
    assert first == again and first != other
    assert all(re.fullmatch(r"mesh-injector-certs-[a-z0-9]{10}", n) for n in (first, other))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_image_set_in_the_base_runs_every_container_of_ours(overlay):
    objs = render(overlay)
    ours = [
        c
        for o in objs
        if o["kind"] in ("Deployment", "Job")
        for c in o["spec"]["template"]["spec"]["containers"]
        if o["metadata"]["name"].startswith("mesh-injector")
    ]
    assert ours and {c["image"] for c in ours} == {f"{IMAGE}:0.1.0"}
    assert not any(o["metadata"]["name"] == "mesh-injector-image-check" for o in objs), "build-local"


def test_an_image_pinned_by_digest_renders(tmp_path):
    shutil.copytree(SOURCE, tmp_path / "deploy")
    digest = "sha256:" + "ab" * 32
    _with_image(tmp_path / "deploy", newName=IMAGE, digest=digest)
    out = subprocess.run(
        [_tool("kubectl"), "kustomize", str(tmp_path / "deploy" / "overlays" / "self-managed")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    images = {
        c["image"]
        for o in yaml.safe_load_all(out.stdout)
        if o and o["kind"] in ("Deployment", "Job")
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {f"{IMAGE}@{digest}"}


def _compose(tmp_path: Path, components: list[str]) -> subprocess.CompletedProcess[str]:
    """kubectl kustomize of the self-managed overlay with ``components``, in that order."""
    root = tmp_path / "install"
    root.mkdir(exist_ok=True)
    rel = Path(os.path.relpath(DEPLOY, root))
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(rel / "overlays" / "self-managed")],
                "components": [str(rel / "components" / c) for c in components],
            }
        )
    )
    return subprocess.run(
        [_tool("kubectl"), "kustomize", str(root)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("order", [["auto-inject", "fail-closed"], ["fail-closed", "auto-inject"]])
def test_components_compose_in_any_order(tmp_path, order):
    out = _compose(tmp_path, order)
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    hook = one(objs, "MutatingWebhookConfiguration")
    assert [w["failurePolicy"] for w in hook["webhooks"]] == ["Fail"]  # auto-inject: one webhook
    assert not any(o.get("metadata", {}).get("name") == "mesh-injector-failure-policy" for o in objs)
    out = _compose(tmp_path, ["fail-closed"])
    hook = one([d for d in yaml.safe_load_all(out.stdout) if d], "MutatingWebhookConfiguration")
    assert [w["failurePolicy"] for w in hook["webhooks"]] == ["Fail", "Fail"]


def test_two_usage_sources_are_refused_when_rendered(tmp_path):
    """serve takes one usage source: the render fails, naming why, instead of a Deployment
    that cannot start."""
    out = _compose(tmp_path, ["usage-metrics-api", "usage-prometheus"])
    assert out.returncode != 0
    assert "mesh-injector-usage-source" in out.stderr and "already registered" in out.stderr
    for single in ("usage-metrics-api", "usage-prometheus"):
        out = _compose(tmp_path, [single])
        assert out.returncode == 0, out.stderr
        assert "mesh-injector-usage-source" not in out.stdout, "build-local: never applied"


def test_the_fleet_role_is_valid_and_grants_reads_and_restarts_only():
    """deploy/operator/fleet-role.yaml (for whoever runs audit and rollout; its sufficiency
    is proven against the real API server in tests/test_fleet_e2e.py)."""
    (role,) = [d for d in yaml.safe_load_all((SOURCE / "operator" / "fleet-role.yaml").read_text()) if d]
    validate_k8s(role)
    assert role["kind"] == "ClusterRole"
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        verbs = set(rule["verbs"])
        if rule["apiGroups"] == ["apps"]:
            assert set(rule["resources"]) == {"deployments", "statefulsets", "daemonsets"}
            assert verbs == {"get", "patch"}
        else:
            assert verbs == {"list"}, rule
            assert "secrets" not in rule["resources"]
            if "configmaps" in rule["resources"]:
                assert rule["resourceNames"] == [
                    "linkerd-config",
                    "linkerd-identity-trust-roots",
                    "istio",
                    "istio-sidecar-injector",
                ]
