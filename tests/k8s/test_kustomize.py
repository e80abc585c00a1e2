"""The kustomize base and overlays, rendered by `kubectl kustomize` (offline), validated
like the Helm chart's output."""

import os
import shlex
import shutil
import subprocess

import pytest
import yaml
from manifests import K8S, check_driver_placement, check_no_credentials, check_security, documents, validate

KUSTOMIZE = K8S / "kustomize"
OVERLAYS = {
    "base": ["ConfigMap", "ConfigMap", "RayJob", "ServiceAccount"],
    "overlays/dev": ["ConfigMap", "ConfigMap", "Deployment", "Job", "RayJob", "Service", "ServiceAccount"],
    "overlays/gpu": ["ConfigMap", "ConfigMap", "RayJob", "ServiceAccount"],
}


def kustomize(path: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        if os.environ.get("TUNER_REQUIRE_SERVICES") == "1":
            pytest.fail("kubectl is required here (TUNER_REQUIRE_SERVICES=1) but is not installed")
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(KUSTOMIZE / path)], capture_output=True, text=True, check=True)
    return documents(out.stdout)


def one(objs, kind, name=None):
    (obj,) = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return obj


@pytest.mark.parametrize("path", sorted(OVERLAYS))
def test_every_object_validates_and_is_locked_down(path):
    objs = kustomize(path)
    assert sorted(o["kind"] for o in objs) == OVERLAYS[path]
    for obj in objs:
        validate(obj)
        check_security(obj)
        check_no_credentials(obj)


@pytest.mark.parametrize("path", sorted(OVERLAYS))
def test_entrypoint_spec_and_references_fit_together(path):
    from tuner.cli import build_parser
    from tuner.spec import apply_overrides, build_spec

    objs = kustomize(path)
    job = one(objs, "RayJob")
    args = build_parser().parse_args(shlex.split(job["spec"]["entrypoint"])[1:])
    assert args.command == "tune" and args.config == "/etc/tuner/spec.yaml" and args.storage.startswith("s3://")
    raw = yaml.safe_load(one(objs, "ConfigMap", "tuner-spec")["data"]["spec.yaml"])
    spec = build_spec(apply_overrides(raw, [*args.overrides, f"name={args.name}", f"storage.uri={args.storage}"]))
    assert spec.scaling.driver_resource == "trial_driver"
    check_driver_placement(job)
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    # Names the RayJob refers to exist (no hash suffixes to chase).
    assert {v["configMap"]["name"] for v in head["volumes"] if "configMap" in v} == {"tuner-spec"}
    for c in head["containers"]:
        assert {e["configMapRef"]["name"] for e in c["envFrom"]} == {"tuner-storage"}
    assert job["spec"]["submitterPodTemplate"]["spec"]["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    # The spec's GPU wish matches the worker pods.
    gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) * g["replicas"]
               for g in cluster["workerGroupSpecs"])
    if spec.scaling.use_gpu:
        assert gpus >= spec.scaling.workers * spec.scaling.gpus_per_worker
    else:
        assert gpus == 0


def test_gpu_overlay_sizes_a_gpu_worker_group():
    job = one(kustomize("overlays/gpu"), "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    pod = group["template"]["spec"]
    assert group["groupName"] == "gpu" and group["replicas"] == 4
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert group["rayStartParams"]["num-gpus"] == "1"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in pod["containers"][0]["env"]}
    head_env = {e["name"] for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert "NVIDIA_VISIBLE_DEVICES" in head_env
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"


def test_dev_overlay_is_self_contained():
    objs = kustomize("overlays/dev")
    storage = one(objs, "ConfigMap", "tuner-storage")["data"]
    assert storage["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert one(objs, "Service", "minio")["spec"]["ports"][0]["port"] == 9000
    assert one(objs, "Deployment", "minio")["spec"]["template"]["spec"]["containers"][0]["image"].startswith("quay.io/minio/minio:")
    job = one(objs, "RayJob")
    assert "s3://tuner/dev" in job["spec"]["entrypoint"]
    assert "mc mb --ignore-existing dev/tuner" in one(objs, "Job", "minio-bucket")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert yaml.safe_load(one(objs, "ConfigMap", "tuner-spec")["data"]["spec.yaml"])["data"]["source"] == "builtin"


def test_kustomize_and_helm_agree():
    """The gpu overlay and the chart's defaults describe the same job."""
    import helm_python as helm

    values = yaml.safe_load((K8S / "helm" / "tuner" / "values.yaml").read_text())
    rendered = helm.Chart.load(K8S / "helm" / "tuner").render(
        {"storage": {"uri": "s3://my-bucket/tuner"}}, name="tuner", namespace="default", is_install=True)
    chart_job = yaml.safe_load(rendered["tuner/templates/rayjob.yaml"])
    objs = kustomize("overlays/gpu")
    job = one(objs, "RayJob")
    for key in ("shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit"):
        assert job["spec"][key] == chart_job["spec"][key], key
    ours, theirs = job["spec"]["rayClusterSpec"], chart_job["spec"]["rayClusterSpec"]
    assert ours["rayVersion"] == theirs["rayVersion"] == values["rayVersion"]
    assert ours["authOptions"] == theirs["authOptions"]
    assert ours["headGroupSpec"]["rayStartParams"]["resources"] == theirs["headGroupSpec"]["rayStartParams"]["resources"]
    assert shlex.split(job["spec"]["entrypoint"]) == shlex.split(chart_job["spec"]["entrypoint"])

    def env_names(cluster):
        return sorted(e["name"] for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"])

    # The chart spells the S3 settings out; kustomize takes them from a ConfigMap.
    assert set(env_names(ours)) <= set(env_names(theirs))
    for a, b in ((ours["headGroupSpec"], theirs["headGroupSpec"]),
                 (ours["workerGroupSpecs"][0], theirs["workerGroupSpecs"][0])):
        pa, pb = a["template"]["spec"], b["template"]["spec"]
        assert pa["securityContext"] == pb["securityContext"]
        assert pa["containers"][0]["securityContext"] == pb["containers"][0]["securityContext"]
    gpu_spec = yaml.safe_load(one(objs, "ConfigMap", "tuner-spec")["data"]["spec.yaml"])
    assert gpu_spec == yaml.safe_load(values["experiment"]["specYaml"])


@pytest.mark.parametrize("path", sorted(OVERLAYS))
def test_object_store_fits_in_dev_shm(path):
    job = one(kustomize(path), "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        shm = next(v for v in group["template"]["spec"]["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"]
        assert int(group["rayStartParams"]["object-store-memory"]) < int(shm.removesuffix("Gi")) * 2**30
