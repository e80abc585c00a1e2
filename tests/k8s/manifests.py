"""Offline checks for rendered Kubernetes manifests (Helm chart and kustomize overlays).

Core kinds are validated with ``kubernetes-validate --strict`` against Kubernetes 1.32;
``RayJob``/``RayCluster`` with ``jsonschema`` against the KubeRay CRDs' ``openAPIV3Schema``
in ``../shared/kuberay-crds/`` (or ``$TUNER_KUBERAY_CRDS``), made strict here: the API
server prunes unknown fields of a custom resource without a word, so a misspelt field
would otherwise pass and then silently do nothing.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
KUBERNETES_VERSION = "1.32.0"
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
RAY_KINDS = set(CRD_FILES)
# Values that must never appear in a rendered object: literal credentials.
CREDENTIAL_KEYS = re.compile(r"(?i)(secret_?access_?key|access_?key_?id|password|root_?user|token)$")


def crd_dir() -> Path:
    return Path(os.environ.get("TUNER_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay-crds"))


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def _strict(schema):
    """Reject properties a structural schema does not declare (unless it preserves them)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str) -> dict:
    path = crd_dir() / CRD_FILES[kind]
    if not path.exists():
        pytest.skip(f"KubeRay CRDs not found at {crd_dir()} (set TUNER_KUBERAY_CRDS)")
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    # The CRD leaves metadata open; the API server checks it like any object's.
    schema["properties"]["metadata"] = {"type": "object"}
    return _strict(schema)


def validate(obj: dict) -> None:
    """Raise with the object's kind/name if it does not validate."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("kind") in RAY_KINDS:
        import jsonschema

        assert obj["apiVersion"] == "ray.io/v1", where
        errors = sorted(jsonschema.Draft7Validator(crd_schema(obj["kind"])).iter_errors(obj), key=str)
        assert not errors, f"{where}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])
    else:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{where}: {e}") from None


def walk(obj, path=()):
    """(path, value) for every leaf of a nested dict/list."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, (*path, i))
    else:
        yield path, obj


def pod_specs(obj: dict):
    """(where, pod spec) for every pod template in a rendered object."""
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    spec = obj.get("spec", {})
    if obj["kind"] == "RayJob":
        cluster = spec["rayClusterSpec"]
        yield f"{name} head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{name} {group['groupName']}", group["template"]["spec"]
        if "submitterPodTemplate" in spec:
            yield f"{name} submitter", spec["submitterPodTemplate"]["spec"]
    elif obj["kind"] == "RayCluster":
        yield f"{name} head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"{name} {group['groupName']}", group["template"]["spec"]
    elif obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        yield name, spec["template"]["spec"]


def check_security(obj: dict) -> None:
    """Non-root, no privilege escalation, ALL capabilities dropped, RuntimeDefault seccomp,
    read-only root filesystem and resource requests/limits for every container."""
    for where, pod in pod_specs(obj):
        pod_ctx = pod.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp"
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            ctx = c.get("securityContext", {})
            cw = f"{where} container {c['name']}"
            assert ctx.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation"
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], f"{cw}: capabilities"
            assert ctx.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem"
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser")) not in (None, 0), f"{cw}: runAsUser"
            res = c.get("resources", {})
            assert res.get("requests") and res.get("limits"), f"{cw}: resources"


def _env_entries(obj):
    """Every ``{name, value|valueFrom}`` environment entry in the object."""
    if isinstance(obj, dict):
        if isinstance(obj.get("name"), str) and ("value" in obj or "valueFrom" in obj):
            yield obj
        for v in obj.values():
            yield from _env_entries(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _env_entries(v)


LITERAL_SECRETS = re.compile(r"AKIA[0-9A-Z]{16}|(?i:aws_secret_access_key\s*[=:])|-----BEGIN [A-Z ]*PRIVATE KEY")


def check_no_credentials(obj: dict) -> None:
    """No Secret objects and no literal credential anywhere: an environment variable named
    like a credential takes its value from a Secret (secretKeyRef)."""
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    assert obj["kind"] != "Secret", f"{where}: manifests must not carry Secrets"
    for env in _env_entries(obj):
        if CREDENTIAL_KEYS.search(env["name"]):
            assert "secretKeyRef" in env.get("valueFrom", {}), f"{where}: {env['name']} is not a secretKeyRef"
    for path, value in walk(obj):
        if isinstance(value, str):
            assert not LITERAL_SECRETS.search(value), f"{where}: {'/'.join(map(str, path))} holds a credential"


def ray_start_resources(group: dict) -> dict:
    """The custom resources a group's `ray start --resources=...` advertises, parsed the
    way KubeRay parses them: surrounding quotes trimmed, then JSON (KubeRay's own format
    is `'{"name": 1}'`; a value it cannot parse only logs an error there)."""
    import json

    value = group.get("rayStartParams", {}).get("resources")
    return json.loads(value.strip("'\"")) if value else {}


def check_driver_placement(job: dict) -> None:
    """Trial drivers take `trial_driver`, which only the head advertises."""
    import shlex

    cluster = job["spec"]["rayClusterSpec"]
    assert ray_start_resources(cluster["headGroupSpec"]).get("trial_driver", 0) >= 1
    for group in cluster.get("workerGroupSpecs", []):
        assert "trial_driver" not in ray_start_resources(group), group["groupName"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert "scaling.driver_resource=trial_driver" in argv
