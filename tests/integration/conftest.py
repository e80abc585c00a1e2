"""Real services for the integration tests: a moto S3 server, Ceph RGW, MNIST files.

A test that needs a service the machine lacks is skipped, except where
``TUNER_REQUIRE_SERVICES=1`` (set by .ci/run): there a missing service fails the test.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
CEPH_SCRIPT = REPO / "tests" / "services" / "ceph_rgw.sh"
# tests/services/install_mlflow.sh's folder.
MLFLOW_SERVER_DIR = Path(os.environ.get("MLFLOW_SERVER_DIR")
                         or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuner-mlflow")
REQUIRE_SERVICES = os.environ.get("TUNER_REQUIRE_SERVICES") == "1"

sys.path.insert(0, str(REPO / "tests" / "services"))
from ray_head import free_port  # noqa: E402,F401 - re-exported for the test modules


def missing(reason: str):
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (TUNER_REQUIRE_SERVICES=1 turns this skip into a failure)")
    pytest.skip(reason)


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def make_bucket(env: dict, bucket: str) -> None:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)


def s3_env(endpoint: str, access: str, secret: str) -> dict:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with a bucket `tuner`; yields the AWS_* env."""
    exe = shutil.which("moto_server")
    if not exe:
        missing("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        env = s3_env(f"http://127.0.0.1:{port}", "testing", "testing")
        make_bucket(env, "tuner")
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def ceph_s3(tmp_path_factory):
    """A real Ceph RGW (checks signatures) on 127.0.0.1 with a bucket `tuner`."""
    if not CEPH_SCRIPT.exists():
        missing("tests/services/ceph_rgw.sh is missing")
    data_dir = tmp_path_factory.mktemp("ceph")
    port = free_port()
    started = subprocess.run(["bash", str(CEPH_SCRIPT), "start", str(data_dir), str(port)],
                             capture_output=True, text=True, timeout=300)
    if started.returncode != 0:
        missing(f"Ceph RGW did not start: {started.stderr.strip().splitlines()[-1:] or started.returncode}")
    try:
        env = {}
        for line in started.stdout.splitlines():
            line = line.removeprefix("export ").strip()
            if "=" in line:
                key, value = line.split("=", 1)
                env[key] = value.strip("'\"")
        env = {**s3_env(env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])}
        make_bucket(env, "tuner")
        # For outage tests (`ceph_rgw.sh stop-rgw/start-rgw DIR`); tuner ignores it.
        yield {**env, "TUNER_TEST_CEPH_DIR": str(data_dir)}
    finally:
        subprocess.run(["bash", str(CEPH_SCRIPT), "stop", str(data_dir)], timeout=60)


@pytest.fixture(scope="session")
def mlflow_server(moto_s3, tmp_path_factory):
    """A real MLflow tracking server (tests/services/install_mlflow.sh): SQLite backend
    store, artifacts in moto's bucket `tuner` under mlflow-artifacts/; yields its URL."""
    exe = MLFLOW_SERVER_DIR / "bin" / "mlflow"
    if not exe.exists():
        missing(f"no MLflow server in {MLFLOW_SERVER_DIR}; run tests/services/install_mlflow.sh")
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}, **moto_s3,
           "MLFLOW_S3_ENDPOINT_URL": moto_s3["AWS_ENDPOINT_URL"]}
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([str(exe), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
                             "--artifacts-destination", "s3://tuner/mlflow-artifacts", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                missing(f"the MLflow server did not start; see {folder / 'server.log'}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def optional_mlflow(request):
    """The MLflow server's URL, or None where it is not installed (never in CI): tests
    that track to it when they can, and check the rest without."""
    if not REQUIRE_SERVICES and not (MLFLOW_SERVER_DIR / "bin" / "mlflow").exists():
        return None
    return request.getfixturevalue("mlflow_server")


def mlflow_runs(url: str, experiment: str):
    """(the experiment's parent run, its nested runs by trial ID), read back through
    MLflow's client."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = {r.data.tags["tuner.trial_id"]: r for r in runs if r not in parents}
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children.values())
    return client, parents[0], children


@pytest.fixture(scope="session")
def mnist_source() -> str:
    """The original MNIST files when ../shared has them, else the shipped subset."""
    return str(SHARED_MNIST) if (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists() else "builtin"


def keras_scores(net, x, y) -> dict:
    """{"loss": ..., metric: ...} of a stored (compiled) model by plain tf_keras ``evaluate``
    on rows as staged (inputs scaled as ``tuner`` feeds them), in one batch."""
    from tuner import training

    values = net.evaluate(training.to_model_input(x), y, batch_size=len(y), verbose=0, return_dict=True)
    return {"loss": values["loss"], **{k: v for k, v in values.items() if k != "loss"}}


@pytest.fixture(scope="module")
def ray_as_it_ships():
    """``TUNER_RAY_PATCHES=off`` for the tuner commands a test module runs: the end-to-end
    run, stop signals, driver loss and storage outages pass on Ray without tuner's
    patches (which only save time and S3 requests)."""
    before = os.environ.get("TUNER_RAY_PATCHES")
    os.environ["TUNER_RAY_PATCHES"] = "off"
    yield
    if before is None:
        os.environ.pop("TUNER_RAY_PATCHES", None)
    else:
        os.environ["TUNER_RAY_PATCHES"] = before


def run_tuner(args: list[str], env: dict | None = None, cwd: Path | None = None, timeout: float = 1200):
    """Run the real `tuner` CLI in a subprocess with its own in-process Ray."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "tuner", *args], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def local_ray():
    """An in-process Ray of 2 CPUs for a test module's Tune runs."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def unique_name():
    return f"t-{uuid.uuid4().hex[:8]}"
