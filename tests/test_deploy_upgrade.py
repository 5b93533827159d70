"""The README's upgrade step (set a new image in deploy/base, `kubectl apply -k` the overlay)
works at any time with self-managed certificates, proven against a real API server.

The certificate Job used to keep one name: its pod template is immutable, so applying a
new image while the old Job was still kept (an hour, `ttlSecondsAfterFinished`) failed with
`field is immutable`. Its name now changes with the image it runs. The API server here runs
without controllers: what matters is what `kubectl apply` is allowed to change."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import apiserver

REPO = Path(__file__).resolve().parent.parent
IMAGE = "registry.example.com:5000/platform/mesh-injector"
KUBECTL = str(Path(sys.executable).parent / "kubectl")


@pytest.fixture(scope="module")
def server():
    started = apiserver.started("mesh-injector-deploy-upgrade")
    yield started
    apiserver.finish(started)


def rendered(tmp_path: Path, tag: str) -> list[dict]:
    """The self-managed overlay as a user renders it after `kustomize edit set image`."""
    root = tmp_path / f"deploy-{tag}"
    shutil.copytree(REPO / "deploy", root)
    kustomization = root / "base" / "kustomization.yaml"
    doc = yaml.safe_load(kustomization.read_text())
    doc["images"] = [{"name": "mesh-injector", "newName": IMAGE, "newTag": tag}]
    kustomization.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = subprocess.run(
        [KUBECTL, "kustomize", str(root / "overlays" / "self-managed")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def apply(server: apiserver.ApiServer, objects: list[dict]) -> subprocess.CompletedProcess[str]:
    """`kubectl apply` of what the certificate Job needs to be created: its namespace and
    the Job (a v1.20 API server does not serve every object of the overlay, e.g. policy/v1)."""
    wanted = [o for o in objects if o["kind"] in ("Namespace", "ServiceAccount", "Job")]
    return subprocess.run(
        [KUBECTL, "--kubeconfig", server.kubeconfig, "apply", "-f", "-"],
        input=yaml.safe_dump_all(wanted),
        capture_output=True,
        text=True,
        timeout=120,
    )


def jobs(server: apiserver.ApiServer) -> dict[str, str]:
    out = subprocess.run(
        [KUBECTL, "--kubeconfig", server.kubeconfig, "get", "jobs", "-n", "mesh-injector", "-o", "yaml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return {
        j["metadata"]["name"]: j["spec"]["template"]["spec"]["containers"][0]["image"]
        for j in yaml.safe_load(out.stdout)["items"]
    }


def test_applying_a_new_image_over_a_kept_certificate_job_works(server, tmp_path):
    first, second = rendered(tmp_path, "0.1.0"), rendered(tmp_path, "0.2.0")
    done = apply(server, first)
    assert done.returncode == 0, done.stderr
    again = apply(server, second)  # within the hour the first Job is kept
    assert again.returncode == 0, again.stderr
    names = {o["metadata"]["name"] for o in first + second if o["kind"] == "Job"}
    assert jobs(server) == {
        next(o["metadata"]["name"] for o in first if o["kind"] == "Job"): f"{IMAGE}:0.1.0",
        next(o["metadata"]["name"] for o in second if o["kind"] == "Job"): f"{IMAGE}:0.2.0",
    }
    assert len(names) == 2
    # re-applying what is applied changes nothing (`kubectl apply -k` run twice)
    assert apply(server, second).returncode == 0


def test_a_certificate_job_of_one_name_could_not_be_upgraded(server, tmp_path):
    """The manifests as they were: the same Job name for every image. The API server
    refuses the new image, which is what the changing name avoids."""
    first, second = rendered(tmp_path, "0.3.0"), rendered(tmp_path, "0.4.0")
    for objects in (first, second):
        for o in objects:
            if o["kind"] == "Job":
                o["metadata"]["name"] = "mesh-injector-certs"
    assert apply(server, first).returncode == 0
    refused = apply(server, second)
    assert refused.returncode != 0
    assert "field is immutable" in refused.stderr, refused.stderr
