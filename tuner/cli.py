"""The ``tuner`` command: stage-data, tune, train, best, report.

Everything that can be checked is checked before Ray starts; a problem is one line on
stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import signal
import sys
from typing import Any

import pyarrow.fs as pafs

from tuner import data, results, storage, worker
from tuner.interrupt import StopOnSignal, resume_command
from tuner.spec import (HYPERPARAMETERS, Spec, SpecError, differences, load_spec, missing_dependency, preset_names,
                        require_fixed)

EXIT_USAGE = 2
SPEC_FILE = "spec.json"  # <storage>/<name>/spec.json: written when an experiment starts
# Fields that say how to run, not what: a re-run may change them.
RUN_SETTINGS = ("failure.", "scaling.max_concurrent_trials", "checkpoint.upload")


class UsageError(RuntimeError):
    """A problem the user can fix; printed as lines, exit 2."""

    def __init__(self, *problems: str):
        self.problems = problems
        super().__init__("\n".join(problems))


def _spec_args(p: argparse.ArgumentParser, default_config: str | None) -> None:
    p.add_argument("--config", default=default_config, required=default_config is None,
                   help=f"YAML spec or preset ({', '.join(preset_names())})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set asha.max_t=5 (repeatable)")
    p.add_argument("--name", help="experiment name (spec `name`)")
    p.add_argument("--storage", help="storage URI: local path or s3://bucket/prefix (spec `storage.uri`)")
    p.add_argument("--endpoint", help="S3 endpoint URL (spec `storage.endpoint`; default $AWS_ENDPOINT_URL)")
    p.add_argument("--address", help="Ray address (default $RAY_ADDRESS, else an in-process local Ray)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuner", description="Distributed hyperparameter tuning on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tune", help="run ASHA over the spec's search space")
    _spec_args(p, "quick")

    p = sub.add_parser("train", help="train the spec's single configuration (no search)")
    _spec_args(p, None)

    p = sub.add_parser("stage-data", help="stage MNIST as Parquet under a storage URI")
    p.add_argument("--source", default="builtin",
                   help="builtin (shipped subset), a folder or s3:// prefix with the IDX .gz files, or download")
    p.add_argument("--dest", required=True, help="dataset URI (local path or s3://bucket/prefix)")
    p.add_argument("--validation-fraction", type=float, default=1 / 12)
    p.add_argument("--endpoint", help="S3 endpoint URL (default $AWS_ENDPOINT_URL)")

    p = sub.add_parser("report", help="write an HTML report of a finished experiment into its folder")
    p.add_argument("--storage", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--endpoint")

    p = sub.add_parser("best", help="print the best trial of a finished experiment")
    p.add_argument("--storage", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--endpoint")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "stage-data":
            return cmd_stage(args)
        if args.command == "best":
            return cmd_best(args)
        if args.command == "report":
            return cmd_report(args)
        with StopOnSignal() as stop:
            try:
                return cmd_run(args, argv, search=args.command == "tune", stop=stop)
            except KeyboardInterrupt:  # `Interrupted`, or what Ray's C++ calls made of it
                print(f"Interrupted; run the same command to resume: {resume_command(argv)}",
                      file=sys.stderr, flush=True)
                return 128 + (stop.signum or signal.SIGINT)
    except KeyboardInterrupt:  # stage-data, best, report: nothing to resume, a re-run starts over
        print("Interrupted.", file=sys.stderr)
        return 128 + signal.SIGINT
    except (SpecError, UsageError) as e:
        problems = e.problems
    except (storage.StorageError, data.DataError) as e:
        problems = [str(e)]
    for line in problems:
        print(f"tuner: error: {line}", file=sys.stderr)
    return EXIT_USAGE


def cmd_stage(args) -> int:
    if not 0 < args.validation_fraction < 1:
        raise UsageError(f"The value of `--validation-fraction` is {args.validation_fraction}, but must be > 0 and < 1.")
    for flag, uri in (("--dest", args.dest), ("--source", None if args.source in ("builtin", "download") else args.source)):
        problem = uri and storage.check_uri(uri)
        if problem:
            raise UsageError(f"The value of `{flag}` is {uri!r}: {problem}")
    storage.preflight(args.dest, args.endpoint)
    manifest = data.stage(data.source_for(args.source, args.endpoint), args.dest, args.validation_fraction, args.endpoint)
    rows = ", ".join(f"{k} {v['rows']}" for k, v in manifest["splits"].items())
    print(f"Staged MNIST ({manifest['source']}) at {args.dest}: {rows} rows.")
    return 0


def cmd_report(args) -> int:
    from tuner import report

    if not storage.exists(storage.join(args.storage, args.name, results.SUMMARY), args.endpoint):
        raise UsageError(f"No summary at {storage.join(args.storage, args.name, results.SUMMARY)}; "
                         "has `tuner tune` finished for that --name and --storage?")
    print(report.write_report(args.storage, args.name, args.endpoint))
    return 0


def cmd_best(args) -> int:
    try:
        summary = results.read_summary(args.storage, args.name, args.endpoint)
    except FileNotFoundError:
        raise UsageError(f"No summary at {storage.join(args.storage, args.name, 'summary.json')}; "
                         "has `tuner tune` finished for that --name and --storage?") from None
    print(json.dumps(summary["best"], indent=2))
    return 0


def ensure_dataset(spec) -> dict:
    """The staged dataset's manifest, staging it first when it is not there yet."""
    uri = spec.dataset_uri()
    manifest = data.read_manifest(uri, spec.storage.endpoint)
    if manifest is None:
        print(f"Staging MNIST from {spec.data.source} to {uri} ...", flush=True)
        manifest = data.stage(data.source_for(spec.data.source, spec.storage.endpoint), uri,
                              spec.data.validation_fraction, spec.storage.endpoint)
    return manifest


def spec_json(spec) -> dict:
    """The spec as it is stored (JSON types: lists, not tuples)."""
    return json.loads(json.dumps(spec.to_dict()))


def with_defaults(stored: dict) -> dict:
    """A stored spec with the fields added since it was stored at their defaults (an
    experiment started before `scheduler` existed ran ASHA, as the default does). Not
    validated: only the differences matter here."""

    def merge(stored: Any, defaults: Any) -> Any:
        if not (isinstance(stored, dict) and isinstance(defaults, dict)) or set(defaults) == set(HYPERPARAMETERS):
            return stored  # a value, or the space (stored whole)
        return {**defaults, **{k: merge(v, defaults[k]) if k in defaults else v for k, v in stored.items()}}

    return merge(stored, spec_json(Spec()))


def experiment_state(spec) -> str:
    """``new``, ``interrupted`` (started, no summary yet), ``failed-trials`` (finished with
    trials that failed, to be retried) or ``finished``, for this spec.

    Running the same command again is safe, which is what a Kubernetes RayJob retry on a
    new cluster does: an interrupted experiment resumes, a finished one is reported.
    The same name with a different spec is refused, so nothing stored is mixed or lost.
    """
    exp = results.experiment_uri(spec)
    endpoint = spec.storage.endpoint
    summary_uri, spec_uri = storage.join(exp, results.SUMMARY), storage.join(exp, SPEC_FILE)
    if storage.exists(summary_uri, endpoint):
        summary = storage.read_json(summary_uri, endpoint)
        state, stored = "finished", summary.get("spec")
        if spec.failure.retry_errored_on_resume and any(t["status"] == "error" for t in summary.get("trials", [])):
            state = "failed-trials"  # finished, but some trials failed: retry those
    elif storage.exists(spec_uri, endpoint):
        state, stored = "interrupted", storage.read_json(spec_uri, endpoint)
    else:
        return "new"
    changed = [k for k in (differences(with_defaults(stored), spec_json(spec)) if stored is not None else [])
               if not k.startswith(RUN_SETTINGS)]
    if changed:
        shown = ", ".join(f"`{k}`" for k in changed[:3]) + (" ..." if len(changed) > 3 else "")
        raise UsageError(
            f"The experiment `{spec.name}` under {spec.storage.uri} was {'started' if state == 'interrupted' else 'run'} "
            f"with a different spec ({shown} differ); run it with the same spec to "
            f"{'resume it' if state == 'interrupted' else 'see its results'}, or choose another --name."
        )
    return state


def cmd_run(args, argv: list[str], search: bool, stop: StopOnSignal | None = None) -> int:
    from tuner import schedule
    from tuner import tune as tuning

    spec = load_spec(args.config, args.overrides, **{
        "name": args.name, "storage.uri": args.storage, "storage.endpoint": args.endpoint,
    }).with_absolute_paths()
    if not search:
        problems = require_fixed(spec)
        if problems:
            raise UsageError(*problems)
    elif missing := missing_dependency(spec):
        raise UsageError(missing)

    address = args.address or os.environ.get("RAY_ADDRESS", "")
    if address.startswith("ray://"):
        raise UsageError(f"The Ray address {address!r} is a Ray Client address, which tuner does not support; "
                         "run tuner on the cluster (`ray job submit -- tuner ...`) or give the GCS address (HOST:6379).")
    # Storage and data first: both are cheap, and a bad endpoint should not cost a Ray start.
    storage.preflight(spec.storage.uri, spec.storage.endpoint)
    if spec.data.uri:
        storage.preflight(spec.data.uri, spec.storage.endpoint)
    state = experiment_state(spec)
    resume = state in ("interrupted", "failed-trials") and tuning.can_resume(spec)
    if state == "failed-trials" and not resume:
        state = "finished"  # no Tune state to retry from: never start it over under its name
    if state == "finished":
        uri = storage.join(results.experiment_uri(spec), results.SUMMARY)
        best = results.read_summary(spec.storage.uri, spec.name, spec.storage.endpoint)["best"]
        print(f"The experiment `{spec.name}` already finished with this spec; its summary: {uri}")
        print(json.dumps(best, indent=2))
        return 0 if best is not None else 1
    manifest = ensure_dataset(spec)
    train_rows = manifest["splits"]["train"]["rows"]
    problems = [p for b in tuning.batch_sizes(spec)
                if (p := schedule.check_plan(schedule.BatchPlan(spec.scaling.workers, b, train_rows)))]
    if problems:
        raise UsageError(*sorted(set(problems)))

    try:
        cluster = tuning.connect(args.address, spec)
    except tuning.ResourceError as e:
        raise UsageError(str(e)) from None
    if stop:
        stop.install()
    print(f"Running up to {cluster.concurrent} trial(s) at once, each {cluster.trial.describe()}.", flush=True)

    if resume:
        what = "interrupted experiment" if state == "interrupted" else "failed trials of the experiment"
        print(f"Resuming the {what} `{spec.name}` from {results.experiment_uri(spec)}: "
              "finished trials are kept, unfinished ones continue from their latest checkpoints.", flush=True)
    else:
        storage.write_json(storage.join(results.experiment_uri(spec), SPEC_FILE), spec_json(spec), spec.storage.endpoint)
    grid, rungs = tuning.run(spec, spec.dataset_uri(), cluster, search=search, resume=resume, stop=stop)
    trials = results.trials_from_grid(grid)
    fs, _ = storage.filesystem(spec.storage.uri, spec.storage.endpoint)
    summary = results.summarize(
        spec, ["tuner", *argv], trials,
        storage_fs_uri=lambda p: storage.to_uri(fs, p),
        checkpoint_exists=lambda p: fs.get_file_info(posixpath.join(p, worker.MODEL_FILE)).type == pafs.FileType.File,
    )
    summary["max_concurrent_trials"] = cluster.concurrent
    summary["cluster_resources"] = {k: v for k, v in cluster.resources.items() if k in ("CPU", "GPU") or
                                    k == spec.scaling.driver_resource}
    if rungs is not None:
        summary["asha_rungs"] = results.asha_rungs(rungs)
    results.write_results(spec, results.rows_from_results(trials))
    results.export_best(spec, summary, spec.dataset_uri())
    uri = results.write_summary(spec, summary)
    best = summary["best"]
    failed = [t for t in summary["trials"] if t["status"] == "error"]
    if failed:
        print(f"{len(failed)} of {len(summary['trials'])} trial(s) failed (listed in {uri}):", file=sys.stderr)
        for t in failed:
            print(f"  {t['trial_id']}: {t.get('error')}", file=sys.stderr)
    if best is None:
        print(f"No trial finished an epoch; see {uri}.", file=sys.stderr)
        return 1
    print(
        f"Best trial {best['trial_id']}: val_accuracy {best['val_accuracy']:.4f}, "
        f"test_accuracy {best['test_accuracy']:.4f} (epoch {best['epoch']})\n"
        f"  config: {json.dumps(best['config'], sort_keys=True)}\n"
        f"  checkpoint: {best['checkpoint_uri']}\n  summary: {uri}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
