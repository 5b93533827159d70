"""Record the fields a mesh's injector writes, from its own golden test data, as
tests/upstream/facts-<mesh>.yaml (facts for tests/test_upstream_<mesh>.py, not copies of
their files).

    python tests/upstream/record.py linkerd LINKERD2_GIT_DIR > tests/upstream/facts-linkerd.yaml
    python tests/upstream/record.py istio ISTIO_GIT_DIR 1.28.2 > tests/upstream/facts-istio-1.28.yaml

Each directory is a clone (bare or not) of linkerd/linkerd2 or istio/istio. For Linkerd the
tags read are each supported version's (``LINKERD_TAGS``), and a case also records the chart
values its golden was made with (what ``cli/cmd/inject_test.go`` sets over the chart's
defaults), so that the comparison gives our injector a ``linkerd-config`` saying the same.
For Istio the tag is the one given (1.23.2, 1.28.2, 1.30.3: one file per minor version); it
also records the values its istiod chart puts in the ``istio-sidecar-injector`` ConfigMap by
default (the chart's ``values.yaml``, picked as its ``istiod-injector-configmap.yaml`` picks
them) and, per case, how that version's own test set the control plane up
(``pkg/kube/inject/inject_test.go``): the tests build the ConfigMaps each case is injected
with from these.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import yaml

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


def main(mesh: str, git_dir: str, *tag: str) -> None:
    if mesh == "istio":
        istio(git_dir, *tag)
        return
    main_linkerd(git_dir)



ISTIO_REPO = "istio/istio"
CHART = "manifests/charts/istio-control/istio-discovery/values.yaml"
# case -> (input, golden output, how that version's test set the control plane up: values
# of the istio-sidecar-injector ConfigMap by dotted path, the mesh config, istiod's own
# environment); the same inputs at every tag
ISTIO_CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "hello": ("hello.yaml", "hello.yaml.injected", {}),
    "hello-probes": ("hello-probes.yaml", "hello-probes.yaml.injected", {}),
    "prometheus-scrape": ("prometheus-scrape.yaml", "prometheus-scrape.yaml.injected", {}),
    "prometheus-scrape-dotted": ("prometheus-scrape2.yaml", "prometheus-scrape2.yaml.injected", {}),
    "tcp-probes": ("tcp-probes.yaml", "tcp-probes.yaml.injected", {}),
    "https-probes": ("https-probes.yaml", "https-probes.yaml.injected", {}),
    "named-port": ("named_port.yaml", "named_port.yaml.injected", {}),
    "user-volume": ("user-volume.yaml", "user-volume.yaml.injected", {}),
    "format-duration": (
        "format-duration.yaml",
        "format-duration.yaml.injected",
        {"mesh": {"defaultConfig": {"drainDuration": "23s"}}},
    ),
    "cni": (
        "hello.yaml",
        "hello.yaml.cni.injected",
        {"values": {"pilot.cni.enabled": True, "global.network": "network1"}},
    ),
    "job": ("job.yaml", "job.yaml.injected", {}),
    "statefulset": ("statefulset.yaml", "statefulset.yaml.injected", {}),
    "grpc-agent": ("grpc-agent.yaml", "grpc-agent.yaml.injected", {}),
}
# what differs by tag: 1.23 turns native sidecars on only with istiod's ENABLE_NATIVE_SIDECARS;
# from 1.27 they are on where every node's kubelet is at least 1.33 (the tests' nodes are 1.33
# and 1.34), and the "old version" goldens turn them off
ISTIO_MORE: dict[str, dict[str, tuple[str, str, dict[str, Any]]]] = {
    "1.23": {
        "native-sidecar": (
            "native-sidecar.yaml",
            "native-sidecar.yaml.injected",
            {"istiod_env": {"ENABLE_NATIVE_SIDECARS": "true"}},
        ),
    },
    "1.28": {
        "hello-legacy": (
            "hello.yaml",
            "hello-old-version.yaml.injected",
            {"istiod_env": {"ENABLE_NATIVE_SIDECARS": "false"}},
        ),
    },
}
ISTIO_MORE["1.30"] = {
    **ISTIO_MORE["1.28"],
    # 1.30: the OTel K8s service attributes, where the mesh's OpenTelemetry provider asks
    "otel-semconv": (
        "hello-otel-semconv.yaml",
        "hello-otel-semconv.yaml.injected",
        {
            "mesh": {
                "extensionProviders": [
                    {
                        "name": "otel",
                        "opentelemetry": {
                            "service": "otel-collector.observability.svc.cluster.local",
                            "port": 4317,
                            "serviceAttributeEnrichment": "OTEL_SEMANTIC_CONVENTIONS",
                        },
                    }
                ]
            }
        },
    ),
}
KUBELETS = {"1.23": [], "1.28": ["v1.33.0", "v1.34.0"], "1.30": ["v1.33.0", "v1.34.0"]}


def _pick(values: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: values[k] for k in keys if k in values}


def chart_values(git_dir: str, tag: str) -> dict[str, Any]:
    """The values istiod's chart writes into the istio-sidecar-injector ConfigMap by default
    (its istiod-injector-configmap.yaml picks global, sidecarInjectorWebhook, revision, the
    pilot's cni (and env, from 1.24) and two gateway fields)."""
    doc = _show(git_dir, tag, CHART)
    if "defaults" in doc:  # 1.23: under defaults, the pilot's own under defaults.pilot
        root = doc["defaults"]
        values = _pick(root, "global", "istio_cni", "sidecarInjectorWebhook", "revision")
        values["pilot"] = _pick(root["pilot"], "cni")
    else:
        root = doc["_internal_defaults_do_not_set"]
        values = _pick(root, "global", "sidecarInjectorWebhook", "revision")
        values["pilot"] = _pick(root, "cni", "env")
    values["gateways"] = _pick(root.get("gateways") or {}, "securityContext", "seccompProfile")
    return values


def istio_facts(inp: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """What Istio's injector wrote for ``inp``: the template's labels and annotations it
    added or changed, and its containers, init containers and volumes as they came out."""
    imeta, ispec = _template(inp)
    ometa, ospec = _template(out)

    def added(key: str) -> dict[str, Any]:
        had = imeta.get(key) or {}
        return {k: v for k, v in (ometa.get(key) or {}).items() if had.get(k) != v}

    return {
        "kind": inp["kind"],
        "name": inp["metadata"].get("name"),
        "namespace": inp["metadata"].get("namespace", "default"),
        "input": {"metadata": imeta, "spec": ispec},
        "native": any(c["name"] == "istio-proxy" for c in ospec.get("initContainers", [])),
        "labels": added("labels"),
        "annotations": added("annotations"),
        "containers": ospec.get("containers", []),
        "initContainers": ospec.get("initContainers", []),
        "volumes": ospec.get("volumes", []),
    }


# istio-iptables' (and, from 1.27, istio-nftables') own goldens of the rules it installs, with
# the configuration its test (tools/istio-*/pkg/capture/run_test.go) gives each: the test-side
# model of what istio-init installs (tests/istio_rules.py) is checked against these
RULE_CASES: dict[str, dict[str, str]] = {
    "empty": {},
    "inbound-ports-wildcard": {"inbound_include": "*"},
    "inbound-ports-include": {"inbound_include": "32000,31000"},
    "ipnets": {"outbound_ranges_include": "10.0.0.0/8"},
    "outbound-ports-include": {"outbound_ports_include": "32000,31000"},
}


def _rule_lines(text: str) -> list[str]:
    """The IPv4 nat table's chains and rules of a capture golden: iptables' as ``-N``/``-A``
    lines (1.23 writes whole commands, later versions the restore format), nft's as written."""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("iptables -t nat "):
            out.append(line[len("iptables -t nat ") :])
        elif line.startswith(("-N ", "-A ", "-I ", "add ", "insert ", "flush ")):
            out.append(line)
        elif line == "COMMIT" and out:
            break  # the first table is IPv4's
    return out


def rules(git_dir: str, tag: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for tool in ("istio-iptables", "istio-nftables"):
        for name, config in RULE_CASES.items():
            path = f"tools/{tool}/pkg/capture/testdata/{name}.golden"
            shown = subprocess.run(
                ["git", "--git-dir", git_dir, "show", f"{tag}:{path}"], capture_output=True, text=True
            )
            if shown.returncode != 0:
                continue  # no istio-nftables before 1.27
            found.setdefault(tool, {})[name] = {
                "source": f"{ISTIO_REPO} {tag}: {path}",
                "config": config,
                "rules": _rule_lines(shown.stdout),
            }
    return found


def istio(git_dir: str, tag: str = "1.23.2") -> None:
    minor = ".".join(tag.split(".")[:2])
    cases = {**ISTIO_CASES, **ISTIO_MORE.get(minor, {})}
    found = {}
    for case, (input_name, golden_name, setup) in cases.items():
        golden = IST + golden_name
        found[case] = {
            "source": f"{ISTIO_REPO} {tag}: {golden}",
            "control_plane": setup,
            **istio_facts(_show(git_dir, tag, IST + input_name), _show(git_dir, tag, golden)),
        }
    print(f"# What Istio {minor}'s injector writes for a given pod, recorded from its own golden outputs")
    print("# (each case names its source, and how that version's test set the control plane up) by")
    print("# tests/upstream/record.py; tests/test_upstream_istio.py compares ours with them field by")
    print("# field. chart_values: what its istiod chart puts in istio-sidecar-injector's values;")
    print("# rules: what its istio-iptables (istio-nftables) installs, from their own goldens.")
    doc = {
        "tag": tag,
        "version": minor,
        "kubelets": KUBELETS[minor],
        "chart_values": chart_values(git_dir, tag),
        "rules": rules(git_dir, tag),
        "cases": found,
    }
    print(yaml.safe_dump(doc, sort_keys=False, width=100), end="")


if __name__ == "__main__":
    main(*sys.argv[1:])
