"""The production Dockerfile and .dockerignore, checked offline (no image is built).

Each check is a small function from text to a list of problems. It runs on the real files
and on bad examples, so a check that can no longer fail shows up here too.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = REPO / "pyproject.toml"

RAY_REPOSITORY = "rayproject/ray"
# rayproject/ray tags: <Ray version>-py<major><minor>[-<variant>], e.g. 2.60.0-py311-gpu.
RAY_TAG = re.compile(r"(?P<ray>\d+\.\d+\.\d+)-py(?P<major>3)(?P<minor>\d+)(?:-(?P<variant>[\w.-]+))?")
PYTHON_CLASSIFIER = re.compile(r"Programming Language :: Python :: (\d+\.\d+)")
# One path component that looks like a secret: .env(.*), .aws, *.pem, *.key, credentials*, id_rsa*.
SECRET_PATH = re.compile(r"(?i)\.env(\..*)?|\.aws|.*\.pem|.*\.key|credentials.*|id_rsa.*")
# Names that must not be set (or even declared) by ENV, ARG or LABEL: build args and
# env values are readable in the image's history and config.
SECRET_NAME = re.compile(r"(?i)aws_access_key_id|aws_secret_access_key|passw(or)?d|token|secret")
WHOLE_CONTEXT = {".", "*", "**", "/"}
# pip install options that take a value (the value is not a requirement).
PIP_VALUE_OPTIONS = {
    "-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i", "--index-url",
    "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix", "--root",
}
SHELL_SEPARATORS = {"&&", "||", ";", "|"}
IGNORE_REQUIRED = (".git", ".env", ".aws", "*.pem")


def parse(text: str) -> DockerfileParser:
    # fileobj: never read or write a Dockerfile in the current directory.
    return DockerfileParser(fileobj=io.BytesIO(text.encode()))


def instructions(df: DockerfileParser, *names: str) -> list[dict]:
    return [i for i in df.structure if i["instruction"] in names]


def final_stage(df: DockerfileParser) -> list[dict]:
    starts = [n for n, i in enumerate(df.structure) if i["instruction"] == "FROM"]
    return df.structure[starts[-1]:] if starts else df.structure


def pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def dependency(project: dict, name: str) -> Requirement:
    for line in project["project"]["dependencies"]:
        req = Requirement(line)
        if canonicalize_name(req.name) == name:
            return req
    raise LookupError(f"pyproject.toml has no dependency on {name}")


# ----- checks -----


def base_image_problems(image: str, project: dict) -> list[str]:
    """The final base image is rayproject/ray at a -gpu tag whose Ray and Python fit pyproject."""
    name, _, tag = image.removeprefix("docker.io/").partition(":")
    if name != RAY_REPOSITORY:
        return [f"The base image is {image}, but must be {RAY_REPOSITORY}:<tag>."]
    match = RAY_TAG.fullmatch(tag)
    if match is None:
        return [f"The base image {image} is not pinned to a <Ray version>-py<XY>-gpu tag."]
    problems = []
    if match["variant"] != "gpu":
        problems.append(f"The base image {image} is not a -gpu variant.")
    ray = Version(match["ray"])
    ray_pin = dependency(project, "ray")
    if ray not in ray_pin.specifier:
        problems.append(f"The base image's Ray {ray} does not satisfy the pin `{ray_pin}` in pyproject.toml.")
    python = f"{match['major']}.{match['minor']}"
    requires = project["project"]["requires-python"]
    if Version(python) not in SpecifierSet(requires):
        problems.append(f"The base image's Python {python} does not satisfy requires-python `{requires}`.")
    classified = {m[1] for c in project["project"].get("classifiers", []) if (m := PYTHON_CLASSIFIER.fullmatch(c))}
    if python not in classified:
        problems.append(
            f"The base image's Python {python} is not a `Programming Language :: Python :: X.Y` "
            f"classifier in pyproject.toml (listed: {sorted(classified) or 'none'})."
        )
    return problems


def user_problems(df: DockerfileParser) -> list[str]:
    """The final stage ends as a non-root user, set explicitly."""
    users = [i for i in final_stage(df) if i["instruction"] == "USER"]
    if not users:
        return ["The final stage has no USER, so the image runs as its base image's user."]
    user = users[-1]["value"].split(":")[0].strip()
    if user in {"root", "0"}:
        return [f"The last USER (line {users[-1]['startline'] + 1}) is {user}; the image must not run as root."]
    return []


def copy_sources(value: str) -> list[str]:
    """The sources of a COPY/ADD value, without its --flags and its destination."""
    rest = re.sub(r"^(--\S+\s+)*", "", value.strip())
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return words[:-1]


def copy_problems(df: DockerfileParser) -> list[str]:
    """No COPY/ADD takes the whole context or a secret-like path."""
    problems = []
    for i in instructions(df, "COPY", "ADD"):
        line = i["startline"] + 1
        for source in copy_sources(i["value"]):
            path = posixpath.normpath(source)
            if path in WHOLE_CONTEXT:
                problems.append(f"{i['instruction']} on line {line} copies the whole build context ({source}).")
            elif any(SECRET_PATH.fullmatch(part) for part in path.split("/")):
                problems.append(f"{i['instruction']} on line {line} copies a secret-like path ({source}).")
    return problems


def secret_setting_problems(df: DockerfileParser) -> list[str]:
    """No ENV, ARG or LABEL names or sets a credential."""
    return [
        f"{i['instruction']} on line {i['startline'] + 1} names a credential: {i['value']}"
        for i in instructions(df, "ENV", "ARG", "LABEL")
        if SECRET_NAME.search(i["value"])
    ]


def pip_installs(df: DockerfileParser) -> list[list[str]]:
    """The arguments of every `pip install` in a RUN."""
    installs = []
    for i in instructions(df, "RUN"):
        words = shlex.split(i["value"])
        for n, word in enumerate(words):
            if posixpath.basename(word) in {"pip", "pip3"} and words[n + 1 : n + 2] == ["install"]:
                args = []
                for arg in words[n + 2 :]:
                    if arg in SHELL_SEPARATORS:
                        break
                    args.append(arg)
                installs.append(args)
    return installs


def requirements(args: list[str]) -> list[Requirement]:
    """The requirements among pip install arguments (not options, not local paths)."""
    reqs, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = arg in PIP_VALUE_OPTIONS
            continue
        if arg.startswith((".", "/")):
            continue
        try:
            reqs.append(Requirement(arg))
        except InvalidRequirement:
            continue
    return reqs


def pip_problems(df: DockerfileParser, project: dict) -> list[str]:
    """pip installs GPU TensorFlow at the pyproject pin, never tensorflow-cpu, and leaves Ray alone."""
    problems = []
    runs = " ".join(i["value"] for i in instructions(df, "RUN"))
    if re.search(r"(?i)tensorflow[-_]cpu", runs):
        problems.append("A RUN installs tensorflow-cpu; the image must use the GPU build.")
    installs = pip_installs(df)
    reqs = [r for args in installs for r in requirements(args)]
    gpu_tf = [r for r in reqs if canonicalize_name(r.name) == "tensorflow" and "and-cuda" in r.extras]
    if not gpu_tf:
        problems.append("No pip install of tensorflow[and-cuda]: the image would have no CUDA libraries for TensorFlow.")
    tf_pin = dependency(project, "tensorflow").specifier
    for r in gpu_tf:
        if r.specifier != tf_pin:
            problems.append(f"The Dockerfile installs `{r}`, but pyproject.toml pins tensorflow `{tf_pin}`.")
    if any(canonicalize_name(r.name) == "ray" for r in reqs):
        problems.append("A pip install names ray; keep the base image's Ray.")
    if any(a in {"-U", "--upgrade"} for args in installs for a in args):
        problems.append("A pip install upgrades (-U); keep the base image's Ray and its pinned dependencies.")
    return problems


def dockerignore_problems(text: str, required: tuple[str, ...] = IGNORE_REQUIRED) -> list[str]:
    """Each required pattern is excluded (as X or **/X) and not re-included by a later !X."""
    lines = [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]
    problems = []
    for name in required:
        excluded = False
        for line in lines:
            negated = line.startswith("!")
            pattern = line.removeprefix("!").lstrip("/")
            if pattern in {name, f"**/{name}"}:
                excluded = not negated
        if not excluded:
            problems.append(f".dockerignore does not exclude {name}.")
    return problems


# ----- the real files -----


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return parse(DOCKERFILE.read_text())


def test_base_image(dockerfile):
    assert base_image_problems(dockerfile.baseimage, pyproject()) == []


def test_runs_as_non_root(dockerfile):
    assert user_problems(dockerfile) == []


def test_copies_only_named_non_secret_paths(dockerfile):
    assert copy_problems(dockerfile) == []


def test_sets_no_credentials(dockerfile):
    assert secret_setting_problems(dockerfile) == []


def test_installs_gpu_tensorflow(dockerfile):
    assert pip_problems(dockerfile, pyproject()) == []


def test_dockerignore():
    assert DOCKERIGNORE.is_file()
    assert dockerignore_problems(DOCKERIGNORE.read_text()) == []


# ----- each check fails on bad input -----


@pytest.mark.parametrize(
    "image, message",
    [
        ("python:3.11", "must be rayproject/ray"),
        ("rayproject/ray-ml:2.60.0-py311-gpu", "must be rayproject/ray"),
        ("rayproject/ray", "not pinned"),
        ("rayproject/ray:latest-gpu", "not pinned"),
        ("rayproject/ray:2.60.0-py311", "not a -gpu variant"),
        ("rayproject/ray:2.60.0-py311-cpu", "not a -gpu variant"),
        ("rayproject/ray:2.59.0-py311-gpu", "Ray 2.59.0 does not satisfy the pin"),
        ("rayproject/ray:2.61.0-py311-gpu", "Ray 2.61.0 does not satisfy the pin"),
        ("rayproject/ray:2.60.0-py39-gpu", "Python 3.9 does not satisfy requires-python"),
        ("rayproject/ray:2.60.0-py312-gpu", "Python 3.12 is not a `Programming Language"),
    ],
)
def test_base_image_rejects(image, message):
    problems = base_image_problems(image, pyproject())
    assert any(message in p for p in problems), problems


def test_base_image_needs_the_python_classifier():
    project = pyproject()
    project["project"]["classifiers"] = ["Programming Language :: Python :: 3.12"]
    (problem,) = base_image_problems("rayproject/ray:2.60.0-py311-gpu", project)
    assert "Python 3.11 is not a `Programming Language" in problem


def test_base_image_read_through_arg():
    df = parse("ARG RAY_IMAGE_TAG=2.59.0-py311-gpu\nFROM rayproject/ray:${RAY_IMAGE_TAG}\n")
    assert "Ray 2.59.0" in base_image_problems(df.baseimage, pyproject())[0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("FROM x\nRUN true\n", "no USER"),
        ("FROM x\nUSER root\n", "is root"),
        ("FROM x\nUSER 0:0\n", "is 0"),
        ("FROM x\nUSER ray\nRUN true\nUSER root\n", "is root"),
        ("FROM x AS build\nUSER ray\nFROM y\nRUN true\n", "no USER"),
    ],
)
def test_user_rejects(text, message):
    problems = user_problems(parse(text))
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(
    "text, message",
    [
        ("COPY . /app\n", "whole build context"),
        ("COPY ./ /app/\n", "whole build context"),
        ("COPY --chown=ray:users * /app/\n", "whole build context"),
        ('COPY [".", "/app"]\n', "whole build context"),
        ("ADD . .\n", "whole build context"),
        ("COPY .env /app/.env\n", "secret-like path (.env)"),
        ("COPY .env.production /app/\n", "secret-like"),
        ("ADD .aws /home/ray/.aws\n", "secret-like"),
        ("COPY tuner/server.pem /app/\n", "secret-like"),
        ("COPY deploy.key /app/\n", "secret-like"),
        ("COPY credentials.json /app/\n", "secret-like"),
        ("COPY --chown=ray:users id_rsa /home/ray/.ssh/\n", "secret-like"),
        ('COPY ["README.md", "secrets/id_rsa.pub", "/app/"]\n', "secret-like"),
    ],
)
def test_copy_rejects(text, message):
    problems = copy_problems(parse(text))
    assert any(message in p for p in problems), problems


def test_copy_accepts_named_paths():
    text = "COPY --chown=ray:users pyproject.toml README.md /app/\nCOPY tuner/ /app/tuner/\nCOPY keyring.py /app/\n"
    assert copy_problems(parse(text)) == []


@pytest.mark.parametrize(
    "text",
    [
        "ENV AWS_ACCESS_KEY_ID=example\n",
        "ARG AWS_SECRET_ACCESS_KEY\n",
        "ENV A=1 \\\n    DB_PASSWORD=example\n",
        "ENV GITHUB_TOKEN example\n",
        'LABEL api.token="example"\n',
        "ARG MINIO_SECRET=example\n",
    ],
)
def test_secret_settings_rejected(text):
    (problem,) = secret_setting_problems(parse(text))
    assert "names a credential" in problem


@pytest.mark.parametrize(
    "run, message",
    [
        ("pip install tensorflow-cpu .", "tensorflow-cpu"),
        ('pip install "tensorflow[and-cuda]>=2.21,<2.22" . && pip install tensorflow_cpu', "tensorflow-cpu"),
        ('pip install --no-cache-dir "tensorflow>=2.21,<2.22" .', "No pip install of tensorflow[and-cuda]"),
        ("echo tensorflow[and-cuda]", "No pip install of tensorflow[and-cuda]"),
        ('pip install "tensorflow[and-cuda]>=2.20,<2.21" .', "but pyproject.toml pins tensorflow"),
        ('pip install "tensorflow[and-cuda]>=2.21,<2.22" "ray[tune]==2.61.0" .', "names ray"),
        ('pip install -U "tensorflow[and-cuda]>=2.21,<2.22" .', "upgrades"),
    ],
)
def test_pip_rejects(run, message):
    problems = pip_problems(parse(f"FROM x\nRUN {run}\n"), pyproject())
    assert any(message in p for p in problems), problems


def test_pip_reads_continued_lines_and_options():
    text = 'FROM x\nRUN python -m pip --version \\\n    && pip install -c c.txt --no-cache-dir \\\n        "tensorflow[and-cuda]>=2.21,<2.22" ./src\n'
    assert pip_problems(parse(text), pyproject()) == []


@pytest.mark.parametrize(
    "text, missing",
    [
        ("", list(IGNORE_REQUIRED)),
        ("# .git\n.env\n.aws\n*.pem\n", [".git"]),
        (".git\n.env\n.aws\n", ["*.pem"]),
        (".git\n**/.env\n.aws\n**/*.pem\n!**/*.pem\n", ["*.pem"]),
        (".git\n.env.*\n.aws\n*.pem\n", [".env"]),
    ],
)
def test_dockerignore_rejects(text, missing):
    assert dockerignore_problems(text) == [f".dockerignore does not exclude {name}." for name in missing]


def test_dockerignore_accepts_anchored_and_any_depth():
    assert dockerignore_problems("/.git\n**/.env\n.aws\n!.aws\n.aws\n*.pem\n") == []
