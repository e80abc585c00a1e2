"""The Helm chart, rendered offline by the real Helm engine (helm-python-sdk), validated
object by object: core kinds against Kubernetes 1.32, RayJob against KubeRay's CRD."""

import re
import shlex
import tomllib

import pytest
import yaml
from manifests import K8S, REPO, check_driver_placement, check_no_credentials, check_security, documents, validate

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the test extra")

CHART = K8S / "helm" / "tuner"

GPU_PROFILE = {
    "workerGroups": [
        {"name": "a100", "replicas": 2, "minReplicas": 1, "maxReplicas": 4, "gpus": 4, "rayCPUs": 16,
         "resources": {"requests": {"cpu": "16", "memory": "64Gi"}, "limits": {"cpu": "16", "memory": "64Gi"}},
         "nodeSelector": {"nvidia.com/gpu.product": "A100-SXM4-80GB"},
         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
         "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
             {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                               "labelSelector": {"matchLabels": {"tuner.io/worker-group": "a100"}}}}]}}},
        {"name": "t4", "replicas": 1, "minReplicas": 0, "maxReplicas": 2, "gpus": 1, "rayCPUs": 4,
         "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}}},
    ],
    "experiment": {"name": "gpu-run", "overrides": ["asha.max_t=5", "search.num_samples=9"],
                   "specYaml": "search:\n  space:\n    learning_rate: {choice: [0.001, 0.003]}\n"
                               "scaling: {workers: 4, use_gpu: true, gpus_per_worker: 1, cpus_per_worker: 2}\n"},
    "head": {"rayCPUs": 4, "resources": {"requests": {"cpu": "4", "memory": "12Gi"}, "limits": {"cpu": "4", "memory": "12Gi"}},
             "nodeSelector": {"node-role/cpu": "true"}},
}
CPU_DEV = {
    "minio": {"enabled": True},
    "storage": {"uri": "s3://tuner/dev"},
    "experiment": {"name": "dev", "specYaml": "data: {source: builtin}\n"
                                              "scaling: {workers: 2, use_gpu: false, cpus_per_worker: 1}\n"},
    "workerGroups": [{"name": "cpu", "replicas": 2, "minReplicas": 2, "maxReplicas": 2, "gpus": 0, "rayCPUs": 2,
                      "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}}],
}


STORAGE = {"storage": {"uri": "s3://tuner/experiments"}}


def with_storage(values):
    values = dict(values or {})
    values["storage"] = {**STORAGE["storage"], **values.get("storage", {})}
    return values


def render(values=None, name="demo") -> list[dict]:
    chart = helm.Chart.load(CHART)
    out = chart.render(with_storage(values), name=name, namespace="ml", is_install=True)
    return [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt") for d in documents(text)]


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


@pytest.mark.parametrize("profile", [None, GPU_PROFILE, CPU_DEV], ids=["default", "gpu", "cpu-dev-minio"])
def test_every_object_validates_and_is_locked_down(profile):
    objs = render(profile)
    kinds = sorted(o["kind"] for o in objs)
    expected = ["ConfigMap", "RayJob", "ServiceAccount"]
    if profile is CPU_DEV:
        expected += ["Deployment", "Job", "Service"]
    assert kinds == sorted(expected)
    for obj in objs:
        validate(obj)
        check_security(obj)
        check_no_credentials(obj)


def test_rayjob_defaults():
    (job,) = by_kind(render(), "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["backoffLimit"] == 2  # a retry resumes the experiment from storage
    assert spec["ttlSecondsAfterFinished"] <= 300  # the cluster's GPUs do not idle for long
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert spec["submitterPodTemplate"]["spec"]["containers"][0]["resources"]["limits"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    head_container = head["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    mounts = {m["mountPath"] for m in head_container["volumeMounts"]}
    assert {"/tmp", "/dev/shm", "/etc/tuner"} <= mounts
    # Ray's object store fits in /dev/shm (else Ray silently puts it on disk under /tmp).
    shm = next(v for v in head["template"]["spec"]["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"]
    assert int(head["rayStartParams"]["object-store-memory"]) < int(shm.removesuffix("Gi")) * 2**30
    env = {e["name"]: e.get("value") for e in head_container["env"]}
    assert env["TUNER_FORWARD_CREDENTIALS"] == "0" and env["HOME"] == "/tmp" and env["NVIDIA_VISIBLE_DEVICES"] == "void"
    check_driver_placement(job)
    (group,) = cluster["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert group["rayStartParams"]["num-gpus"] == "1"
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in worker["env"]}


def test_ray_version_matches_image_and_package():
    (job,) = by_kind(render(), "RayJob")
    ray_version = job["spec"]["rayClusterSpec"]["rayVersion"]
    dockerfile = (REPO / "Dockerfile").read_text()
    tag = re.search(r"^FROM rayproject/ray:(\S+)", dockerfile, re.M).group(1)
    for name, default in re.findall(r"^ARG (\w+)=(\S+)", dockerfile, re.M):
        tag = tag.replace(f"${{{name}}}", default)
    assert re.fullmatch(rf"{re.escape(ray_version)}-py\d+-gpu", tag), tag
    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(Requirement(d) for d in deps if Requirement(d).name == "ray")
    assert ray_version in ray_pin.specifier
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert f"ray{ray_version}" in values["image"]["tag"]


def test_entrypoint_and_spec_are_what_tuner_accepts():
    from tuner.cli import build_parser
    from tuner.spec import apply_overrides, build_spec

    objs = render(GPU_PROFILE)
    (job,) = by_kind(objs, "RayJob")
    (config,) = by_kind(objs, "ConfigMap")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "tuner"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.config, args.name, args.storage) == ("tune", "/etc/tuner/spec.yaml", "gpu-run",
                                                                     "s3://tuner/experiments")
    assert args.overrides == ["scaling.driver_resource=trial_driver", "asha.max_t=5", "search.num_samples=9"]
    raw = yaml.safe_load(config["data"]["spec.yaml"])
    spec = build_spec(apply_overrides(raw, [*args.overrides, f"name={args.name}", f"storage.uri={args.storage}"]))
    assert spec.scaling.use_gpu and spec.scaling.workers == 4 and spec.asha.max_t == 5
    assert spec.scaling.driver_resource == "trial_driver"
    # The user's spec replaces the chart's example; nothing of the example is merged in.
    assert spec.search.space["learning_rate"].values == (0.001, 0.003)
    assert spec.search.num_samples == 9 and "width" not in raw.get("search", {}).get("space", {})


def test_every_value_is_one_shell_word_in_the_entrypoint():
    from tuner.cli import build_parser

    override = "search.space.optimizer={choice: ['adam', 'sgd']}"
    (job,) = by_kind(render({"experiment": {"name": "x", "specYaml": "{}", "overrides": [override]},
                             "workerGroups": CPU_DEV["workerGroups"]}), "RayJob")
    args = build_parser().parse_args(shlex.split(job["spec"]["entrypoint"])[1:])
    assert args.overrides[-1] == override


def test_gpu_profile_passes_scheduling_through():
    (job,) = by_kind(render(GPU_PROFILE), "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["nodeSelector"] == {"node-role/cpu": "true"}
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    a100, t4 = groups["a100"], groups["t4"]
    assert (a100["replicas"], a100["minReplicas"], a100["maxReplicas"]) == (2, 1, 4)
    pod = a100["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == 4
    assert pod["nodeSelector"] == GPU_PROFILE["workerGroups"][0]["nodeSelector"]
    assert pod["tolerations"] == GPU_PROFILE["workerGroups"][0]["tolerations"]
    assert pod["affinity"] == GPU_PROFILE["workerGroups"][0]["affinity"]
    assert a100["rayStartParams"] == {"num-cpus": "16", "num-gpus": "4", "object-store-memory": str(2 * 2**30)}
    assert t4["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_credentials_come_only_from_the_existing_secret():
    objs = render(CPU_DEV)
    for obj in objs:
        for env in (e for c in _containers(obj) for e in c.get("env", [])):
            if env["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
                assert env["valueFrom"]["secretKeyRef"]["name"] == "tuner-s3", (obj["kind"], env)
    (job,) = by_kind(objs, "RayJob")
    head_env = {e["name"]: e for e in job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert head_env["AWS_ENDPOINT_URL"]["value"] == "http://demo-tuner-minio:9000"
    (deploy,) = by_kind(objs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"].startswith("quay.io/minio/minio:")


def _containers(obj):
    from manifests import pod_specs

    for _, pod in pod_specs(obj):
        yield from pod.get("initContainers", [])
        yield from pod["containers"]


def test_every_values_problem_is_reported_at_once():
    bad = {
        "minio": {"enabled": True},
        "storage": {"uri": "s3://tuner-prod/x"},
        "experiment": {"name": "x", "specYaml": "scaling: {workers: 8, use_gpu: true, gpus_per_worker: 1, cpus_per_worker: 8}"},
        "workerGroups": [{"name": "gpu", "replicas": 9, "minReplicas": 1, "maxReplicas": 2, "gpus": 1, "rayCPUs": 4,
                          "resources": {"requests": {"cpu": "4"}, "limits": {"cpu": "4"}}}],
    }
    with pytest.raises(Exception) as err:
        render(bad, name="1st")
    message = str(err.value)
    assert "replicas is 9, but must be between minReplicas (1) and maxReplicas (2)" in message
    assert "asks for 8 workers x 1 GPUs per trial, but the worker groups' replicas have 9 GPUs" not in message
    assert "No worker group's pod fits one Train worker (8 CPUs and 1 GPUs)" in message
    assert "with minio.enabled it must be in the dev bucket: s3://tuner/..." in message
    assert 'The release name makes the RayJob name "1st-tuner"' in message


def test_gpus_are_counted_from_running_replicas_and_storage_is_required():
    chart = helm.Chart.load(CHART)
    groups = [{"name": "gpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 4, "gpus": 1, "rayCPUs": 4,
               "resources": {"requests": {"cpu": "4"}, "limits": {"cpu": "4"}}}]
    with pytest.raises(Exception) as err:
        chart.render({"workerGroups": groups}, name="demo", namespace="ml", is_install=True)
    message = str(err.value)
    assert "storage.uri is not set" in message
    assert "asks for 2 workers x 1 GPUs per trial, but the worker groups' replicas have 1 GPUs in all" in message


@pytest.mark.parametrize("values, field", [
    ({"storage": {"uri": "/local/path"}}, "uri"),
    ({"storage": {"uri": "s3://tuner/x", "accessKey": "AKIA..."}}, "accessKey"),
    ({"storage": {"uri": "s3://tuner/a b;echo pwned"}}, "uri"),
    ({"experiment": {"name": "x", "specYaml": "{}", "overrides": ["asha.max_t=$(id)"]}}, "overrides"),
    ({"job": {"backoffLimit": -1}}, "backoffLimit"),
    ({"experiment": {"name": "x", "spec": {"storage": {"uri": "s3://a/b"}}}}, "spec"),
    ({"experiment": {"name": "x", "specYaml": "storage: {uri: s3://a/b}"}}, "specYaml sets `name` or `storage`"),
    ({"workerGroups": [{"name": "Bad_Name", "replicas": 1, "minReplicas": 1, "maxReplicas": 1, "gpus": 0,
                        "rayCPUs": 1, "resources": {"requests": {"cpu": 1}, "limits": {"cpu": 1}}}]}, "name"),
])
def test_schema_rejects_bad_values(values, field):
    chart = helm.Chart.load(CHART)
    with pytest.raises(Exception) as err:
        chart.render(with_storage(values) if "storage" not in values else values, name="demo", namespace="ml",
                     is_install=True)
    assert field in str(err.value)


def gpu_fleet(pods: int, head_cpus: int, head_memory: str, spec_extra: str = "") -> dict:
    """`pods` pods of 2 GPUs, 2-worker GPU trials: pods trials fit at once on the GPUs."""
    return {
        "workerGroups": [{"name": "gpu", "replicas": pods, "minReplicas": pods, "maxReplicas": pods, "gpus": 2,
                          "rayCPUs": 8, "resources": {"requests": {"cpu": "8"}, "limits": {"cpu": "8"}}}],
        "experiment": {"name": "fleet", "specYaml": "scaling: {workers: 2, use_gpu: true, gpus_per_worker: 1, "
                                                    f"cpus_per_worker: 4{spec_extra}}}\n"},
        "head": {"rayCPUs": head_cpus, "resources": {"requests": {"cpu": "4", "memory": head_memory},
                                                     "limits": {"cpu": "4", "memory": head_memory}}},
    }


@pytest.mark.parametrize("pods, head_cpus, memory, extra, refused", [
    (32, 8, "16Gi", "", None),  # 8 drivers on the head's CPUs: 4 + 2 + 8 x 1.2 = 15.6 GiB
    (32, 32, "16Gi", "", (32, 44.4)),  # the GPUs hold 32 at once
    (32, 32, "46000Mi", "", None),  # 44.9 GiB
    (32, 32, "48G", "", None),  # 44.7 GiB
    (32, 32, "47G", "", (32, 44.4)),  # 43.8 GiB
    (32, 32, "16Gi", ", max_concurrent_trials: 8", None),
    (4, 32, "8Gi", "", (4, 10.8)),
])
def test_the_head_must_hold_the_trials_that_can_run_at_once(pods, head_cpus, memory, extra, refused):
    values = gpu_fleet(pods, head_cpus, memory, extra)
    if refused is None:
        render(values)
        return
    with pytest.raises(Exception) as err:
        render(values)
    trials, need = refused
    assert f"The head's memory ({memory}) holds fewer than the {trials} trials that can run at once: they need " \
           f"about {need:.1f} GiB" in str(err.value)


def test_notes_tell_how_to_follow_and_where_results_are():
    chart = helm.Chart.load(CHART)
    notes = chart.render(with_storage({}), name="demo", namespace="ml", is_install=True)["tuner/templates/NOTES.txt"]
    assert "kubectl get rayjob demo-tuner -n ml" in notes
    assert "ray job logs" in notes
    assert "s3://tuner/experiments/mnist-asha/" in notes


def test_the_checks_catch_what_they_are_for():
    import copy

    objs = render()
    (job,) = by_kind(objs, "RayJob")
    typo = copy.deepcopy(job)
    typo["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}  # misspelt: pruned silently by the API
    with pytest.raises(AssertionError, match="rayStartParam"):
        validate(typo)
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["backoffLimit"] = "three"
    with pytest.raises(AssertionError, match="backoffLimit"):
        validate(wrong_type)
    (config,) = by_kind(objs, "ConfigMap")
    with pytest.raises(AssertionError, match="ConfigMap"):
        validate({**config, "spec": {}})
    root = copy.deepcopy(job)
    root["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["securityContext"][
        "allowPrivilegeEscalation"] = True
    with pytest.raises(AssertionError, match="allowPrivilegeEscalation"):
        check_security(root)
    leak = copy.deepcopy(job)
    leak["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"})
    with pytest.raises(AssertionError, match="AWS_SECRET_ACCESS_KEY"):
        check_no_credentials(leak)


def test_helm_lint_strict_is_clean():
    report = helm.lint(CHART, with_storage({}), strict=True, kube_version="v1.32.0")
    assert not report["errors"]
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
