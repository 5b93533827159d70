"""Record the fields a mesh's injector writes, from its own golden test data, as
tests/upstream/facts-<mesh>.yaml (facts for tests/test_upstream_<mesh>.py, not copies of
their files).

    python tests/upstream/record.py linkerd LINKERD2_GIT_DIR > tests/upstream/facts-linkerd.yaml
    python tests/upstream/record.py istio ISTIO_GIT_DIR > tests/upstream/facts-istio.yaml

Each directory is a clone (bare or not) of linkerd/linkerd2 or istio/istio; the tags read
are edge-24.8.2 and 1.23.2.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import yaml

LINKERD, ISTIO = "edge-24.8.2", "1.23.2"
L5D, IST = "cli/cmd/testdata/", "pkg/kube/inject/testdata/inject/"
# case -> (repository, input, golden output, proxy container, init container)
CASES = {
    "linkerd-deployment": (
        "linkerd",
        L5D + "inject_emojivoto_deployment.input.yml",
        L5D + "inject_emojivoto_deployment.golden.yml",
    ),
    "linkerd-native-sidecar": (
        "linkerd",
        L5D + "inject_emojivoto_deployment.input.yml",
        L5D + "inject_emojivoto_deployment_native_sidecar.golden.yml",
    ),
    "linkerd-udp": (
        "linkerd",
        L5D + "inject_emojivoto_deployment_udp.input.yml",
        L5D + "inject_emojivoto_deployment_udp.golden.yml",
    ),
    "istio-hello": ("istio", IST + "hello.yaml", IST + "hello.yaml.injected"),
    "istio-hello-probes": ("istio", IST + "hello-probes.yaml", IST + "hello-probes.yaml.injected"),
    "istio-native-sidecar": ("istio", IST + "native-sidecar.yaml", IST + "native-sidecar.yaml.injected"),
    "istio-prometheus-scrape": (
        "istio",
        IST + "prometheus-scrape.yaml",
        IST + "prometheus-scrape.yaml.injected",
    ),
    "istio-prometheus-scrape-dotted": (
        "istio",
        IST + "prometheus-scrape2.yaml",
        IST + "prometheus-scrape2.yaml.injected",
    ),
}


def _show(git_dir: str, tag: str, path: str) -> Any:
    text = subprocess.run(
        ["git", "--git-dir", git_dir, "show", f"{tag}:{path}"], capture_output=True, text=True, check=True
    ).stdout
    return next(d for d in yaml.safe_load_all(text) if d)


def _template(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    if doc["kind"] == "Pod":
        return doc["metadata"], doc["spec"]
    template = doc["spec"]["template"]
    return template.get("metadata") or {}, template["spec"]


def facts(source: str, inp: dict[str, Any], out: dict[str, Any], proxy: str, init: str) -> dict[str, Any]:
    imeta, ispec = _template(inp)
    ometa, ospec = _template(out)
    containers = {c["name"]: c for c in ospec.get("containers", []) + ospec.get("initContainers", [])}
    p = containers[proxy]
    fields = (
        "args",
        "env",
        "ports",
        "readinessProbe",
        "livenessProbe",
        "startupProbe",
        "lifecycle",
        "securityContext",
        "volumeMounts",
    )
    own = {x["name"] for x in ispec.get("containers", []) + ispec.get("initContainers", [])}
    return {
        "source": source,
        "kind": inp["kind"],
        "name": inp["metadata"].get("name"),
        "namespace": inp["metadata"].get("namespace", "default"),
        "input": {"metadata": imeta, "spec": ispec},
        "native": any(c["name"] == proxy for c in ospec.get("initContainers", [])),
        "proxy": {k: p[k] for k in fields if k in p},
        "init": {"name": init, "args": containers[init]["args"]} if init in containers else None,
        "annotations": {
            k: v
            for k, v in (ometa.get("annotations") or {}).items()
            if k not in (imeta.get("annotations") or {})
        },
        "labels": {
            k: v for k, v in (ometa.get("labels") or {}).items() if k not in (imeta.get("labels") or {})
        },
        "volumes": [v["name"] for v in ospec.get("volumes", [])],
        "app_probes": {
            c["name"]: {k: c[k] for k in ("readinessProbe", "livenessProbe", "startupProbe") if k in c}
            for c in ospec.get("containers", []) + ospec.get("initContainers", [])
            if c["name"] in own
        },
    }


def main(mesh: str, git_dir: str) -> None:
    tag, repo = (LINKERD, "linkerd/linkerd2") if mesh == "linkerd" else (ISTIO, "istio/istio")
    proxy, init = ("linkerd-proxy", "linkerd-init") if mesh == "linkerd" else ("istio-proxy", "istio-init")
    found = {}
    for case, (source, input_path, golden_path) in CASES.items():
        if source != mesh:
            continue
        found[case] = facts(
            f"{repo} {tag}: {golden_path}",
            _show(git_dir, tag, input_path),
            _show(git_dir, tag, golden_path),
            proxy,
            init,
        )
    who = "Linkerd's" if mesh == "linkerd" else "Istio's"
    print(f"# The fields {who} injector writes for a given pod, recorded from its own golden outputs")
    print("# (each case names its source) by tests/upstream/record.py; the test compares ours with")
    print("# them field by field.")
    print(yaml.safe_dump(found, sort_keys=False, width=100), end="")


if __name__ == "__main__":
    main(*sys.argv[1:])
