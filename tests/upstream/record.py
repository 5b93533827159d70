"""Record the fields a mesh's injector writes, from its own golden test data, as
tests/upstream/facts-<mesh>.yaml (facts for tests/test_upstream_<mesh>.py, not copies of
their files).

    python tests/upstream/record.py linkerd LINKERD2_GIT_DIR > tests/upstream/facts-linkerd.yaml
    python tests/upstream/record.py istio ISTIO_GIT_DIR > tests/upstream/facts-istio.yaml

Each directory is a clone (bare or not) of linkerd/linkerd2 or istio/istio; the tags read
are, for Linkerd, each supported version's (``LINKERD_TAGS``), and 1.23.2 for Istio. A
Linkerd case also records the chart values its golden was made with (what
``cli/cmd/inject_test.go`` sets over the chart's defaults), so that the comparison gives
our injector a ``linkerd-config`` saying the same.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import yaml

ISTIO = "1.23.2"
L5D, IST = "cli/cmd/testdata/", "pkg/kube/inject/testdata/inject/"
# Linkerd version -> the tag of linkerd/linkerd2 that is it
LINKERD_TAGS = {"2.16": "edge-24.8.2", "2.19": "version-2.19", "2.20": "version-2.20"}
# the values a golden was made with, as inject_test.go sets them over the chart's: each dotted
# path is assigned whole (values.ProxyInit.IgnoreInboundPorts = ..., values.Proxy.Inbound = ...)
_IGNORES = {"proxyInit.ignoreInboundPorts": "22,8100-8102", "proxyInit.ignoreOutboundPorts": "5432"}
_PARAMS = {
    "proxy.inbound": {"scope": {"proto": {"appleSauce": "valueA", "blueberry": 3.14}}},
    "proxy.outbound": {"scope": {"proto": {"applesauce": "valueA", "blueBerry": True}}},
}
_REQUESTS = {
    "proxy.resources": {
        "cpu": {"request": "110m", "limit": "160m"},
        "memory": {"request": "100Mi", "limit": "150Mi"},
    }
}
# Linkerd case -> (input, golden, the values the golden was made with over the chart's: the
# same in each version's cli/cmd/inject_test.go)
LINKERD_CASES: dict[str, tuple[str, str, dict]] = {
    "deployment": ("inject_emojivoto_deployment.input.yml", "inject_emojivoto_deployment.golden.yml", {}),
    "native-sidecar": (
        "inject_emojivoto_deployment.input.yml",
        "inject_emojivoto_deployment_native_sidecar.golden.yml",
        {"proxy.nativeSidecar": True},
    ),
    "udp": ("inject_emojivoto_deployment_udp.input.yml", "inject_emojivoto_deployment_udp.golden.yml", {}),
    "pod": ("inject_emojivoto_pod.input.yml", "inject_emojivoto_pod.golden.yml", {}),
    "statefulset": ("inject_emojivoto_statefulset.input.yml", "inject_emojivoto_statefulset.golden.yml", {}),
    "controller-name": (
        "inject_emojivoto_deployment_controller_name.input.yml",
        "inject_emojivoto_deployment_controller_name.golden.yml",
        {},
    ),
    "host-network-false": (
        "inject_emojivoto_deployment_hostNetwork_false.input.yml",
        "inject_emojivoto_deployment_hostNetwork_false.golden.yml",
        {},
    ),
    "capabilities": (
        "inject_emojivoto_deployment_capabilities.input.yml",
        "inject_emojivoto_deployment_capabilities.golden.yml",
        {},
    ),
    "proxy-ignores": (
        "inject_emojivoto_deployment.input.yml",
        "inject_emojivoto_deployment_proxyignores.golden.yml",
        _IGNORES,
    ),
    "pod-proxy-ignores": (
        "inject_emojivoto_pod.input.yml",
        "inject_emojivoto_pod_proxyignores.golden.yml",
        _IGNORES,
    ),
    "opaque-ports": (
        "inject_emojivoto_deployment.input.yml",
        "inject_emojivoto_deployment_opaque_ports.golden.yml",
        {"proxy.opaquePorts": "3000,5000-6000,mysql"},
    ),
    "access-log": (
        "inject_emojivoto_deployment.input.yml",
        "inject_emojivoto_deployment_access_log.golden.yml",
        {"proxy.accessLog": "apache"},
    ),
    "params": (
        "inject_emojivoto_deployment.input.yml",
        "inject_emojivoto_deployment_params.golden.yml",
        _PARAMS,
    ),
    "cni": (
        "inject_emojivoto_deployment.input.yml",
        "inject_emojivoto_deployment_no_init_container.golden.yml",
        {"cniEnabled": True},
    ),
    "pod-with-requests": (
        "inject_emojivoto_pod_with_requests.input.yml",
        "inject_emojivoto_pod_with_requests.golden.yml",
        _REQUESTS,
    ),
}
# case -> (repository, input, golden output)
CASES = {
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


LINKERD_CONTAINERS = ("linkerd-proxy", "linkerd-init", "linkerd-network-validator")


def linkerd_facts(source: str, version: str, values: dict, inp: dict[str, Any], out: dict[str, Any]) -> dict:
    """Everything Linkerd's injector added to the pod: its containers whole (where each is),
    its volumes whole, the labels and annotations; and the app containers' probes."""
    imeta, ispec = _template(inp)
    ometa, ospec = _template(out)
    added = {
        key: [c for c in ospec.get(key, []) if c["name"] in LINKERD_CONTAINERS]
        for key in ("initContainers", "containers")
    }
    own_volumes = {v["name"] for v in ispec.get("volumes", [])}
    own = {x["name"] for x in ispec.get("containers", []) + ispec.get("initContainers", [])}
    return {
        "source": source,
        "version": version,
        "values": values,
        "kind": inp["kind"],
        "name": inp["metadata"].get("name"),
        "namespace": inp["metadata"].get("namespace", "default"),
        "input": {"metadata": imeta, "spec": ispec},
        "initContainers": added["initContainers"],
        "containers": added["containers"],
        "volumes": [v for v in ospec.get("volumes", []) if v["name"] not in own_volumes],
        "annotations": {
            k: v
            for k, v in (ometa.get("annotations") or {}).items()
            if k not in (imeta.get("annotations") or {})
        },
        "labels": {
            k: v for k, v in (ometa.get("labels") or {}).items() if k not in (imeta.get("labels") or {})
        },
        "app_probes": {
            c["name"]: {k: c[k] for k in ("readinessProbe", "livenessProbe", "startupProbe") if k in c}
            for c in ospec.get("containers", []) + ospec.get("initContainers", [])
            if c["name"] in own
        },
    }


def main_linkerd(git_dir: str) -> None:
    found = {}
    for version, tag in LINKERD_TAGS.items():
        for case, (input_path, golden_path, values) in LINKERD_CASES.items():
            found[f"{version}/{case}"] = linkerd_facts(
                f"linkerd/linkerd2 {tag}: {L5D}{golden_path}",
                version,
                values,
                _show(git_dir, tag, L5D + input_path),
                _show(git_dir, tag, L5D + golden_path),
            )
    print("# What Linkerd's injector (`linkerd inject`) adds to a pod at each supported version, recorded")
    print("# from its own golden outputs (each case names its source, and the chart values it was made")
    print("# with) by tests/upstream/record.py; tests/test_upstream_linkerd.py compares ours with them")
    print("# field by field.")
    print(yaml.safe_dump(found, sort_keys=False, width=100), end="")


def main(mesh: str, git_dir: str) -> None:
    if mesh == "linkerd":
        main_linkerd(git_dir)
        return
    tag, repo = ISTIO, "istio/istio"
    proxy, init = "istio-proxy", "istio-init"
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
    who = "Istio's"
    print(f"# The fields {who} injector writes for a given pod, recorded from its own golden outputs")
    print("# (each case names its source) by tests/upstream/record.py; the test compares ours with")
    print("# them field by field.")
    print(yaml.safe_dump(found, sort_keys=False, width=100), end="")


if __name__ == "__main__":
    main(*sys.argv[1:])
