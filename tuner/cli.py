"""The ``tuner`` command: stage-data, tune, train, best, report. Argument parsing and
printing; the steps of a run are ``tuner.experiment``'s.

Everything that can be checked is checked before Ray starts; a problem is one line on
stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from tuner import data, experiment, results, stderr_filter, storage
from tuner.experiment import UsageError
from tuner.interrupt import StopOnSignal, resume_command
from tuner.spec import SpecError, preset_names
from tuner.tune import TF_ENV

EXIT_USAGE = 2


def _spec_args(p: argparse.ArgumentParser, default_config: str | None) -> None:
    p.add_argument("--config", default=default_config, required=default_config is None,
                   help=f"YAML spec or preset ({', '.join(preset_names())})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set asha.max_t=5 (repeatable)")
    p.add_argument("--name", help="experiment name (spec `name`)")
    p.add_argument("--storage", help="storage URI: local path or s3://bucket/prefix (spec `storage.uri`)")
    p.add_argument("--endpoint", help="S3 endpoint URL (spec `storage.endpoint`; default $AWS_ENDPOINT_URL)")
    p.add_argument("--address", help="Ray address (default $RAY_ADDRESS, else an in-process local Ray)")
    p.add_argument("--working-dir", help="folder of the model builder's module, shipped to every worker "
                                         "(default: the current folder)")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_const", dest="console", const="verbose", default="normal",
                      help="also print Ray's, Ray Tune's, Ray Train's and TensorFlow's own output")
    loud.add_argument("-q", "--quiet", action="store_const", dest="console", const="quiet",
                      help="print only failures and the final result")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuner", description="Distributed hyperparameter tuning on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tune", help="run ASHA over the spec's search space")
    _spec_args(p, "quick")

    p = sub.add_parser("train", help="train the spec's single configuration (no search)")
    _spec_args(p, None)

    p = sub.add_parser("stage-data", help="stage a dataset (MNIST, or your CSV or Parquet table) under a storage URI")
    p.add_argument("--source", default="builtin",
                   help="a .csv or .parquet file, or a folder / s3:// prefix of .parquet files; or MNIST: builtin "
                        "(shipped subset), download, or a folder / s3:// prefix with the IDX .gz files")
    p.add_argument("--dest", required=True, help="dataset URI (local path or s3://bucket/prefix)")
    p.add_argument("--label", help="the label column (CSV / Parquet sources)")
    p.add_argument("--features", help="feature columns, comma-separated (default: every column but the label "
                                      "and `split`)")
    p.add_argument("--feature-shape", help="the shape of one list-column feature, e.g. 8,8")
    p.add_argument("--task", choices=("classification", "regression"),
                   help="default: classification for integer or string labels, regression for floats")
    p.add_argument("--validation-fraction", type=float, default=1 / 12)
    p.add_argument("--test-fraction", type=float, default=1 / 12,
                   help="carved off a CSV / Parquet source without a `split` column")
    p.add_argument("--seed", type=int, default=0, help="seeds the carving of validation and test")
    p.add_argument("--endpoint", help="S3 endpoint URL (default $AWS_ENDPOINT_URL)")

    p = sub.add_parser("report", help="write an HTML report of a finished experiment into its folder")
    p.add_argument("--storage", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--endpoint")

    p = sub.add_parser("best", help="print the best trial of a finished experiment (a multi-objective one: its "
                                    "Pareto front)")
    p.add_argument("--storage", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--endpoint")
    p.add_argument("--pick", metavar="METRIC", help="a multi-objective experiment: print the trial of its Pareto front "
                                                    "that is best on METRIC, one of its objectives")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command; ``argv`` None: this process's own command line (then, unless
    ``--verbose``, its stderr goes through ``tuner.stderr_filter``; a caller that passes
    ``argv``, a test, keeps its stderr as it is)."""
    # TensorFlow as the workers have it (tuner.tune.TF_ENV): quiet, and `tf.keras` is
    # tf_keras, so a builder's check here sees the model the workers build, and
    # `import tensorflow` skips Keras 3 (and, where it is installed, scikit-learn
    # through Keras 3's wrappers): about 1 s less before the first trial here.
    for key, value in TF_ENV.items():
        os.environ.setdefault(key, value)
    own_process = argv is None
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
                return cmd_run(args, argv, search=args.command == "tune", stop=stop, filter_stderr=own_process)
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
    problems = []
    for flag, value in (("--validation-fraction", args.validation_fraction), ("--test-fraction", args.test_fraction)):
        if not 0 < value < 1:
            problems.append(f"The value of `{flag}` is {value}, but must be > 0 and < 1.")
    if not problems and args.validation_fraction + args.test_fraction >= 1:
        problems.append("`--validation-fraction` and `--test-fraction` add up to 1 or more; nothing is left to train on.")
    for flag, uri in (("--dest", args.dest), ("--source", None if args.source in ("builtin", "download") else args.source)):
        problem = uri and storage.check_uri(uri)
        if problem:
            problems.append(f"The value of `{flag}` is {uri!r}: {problem}")
    shape = None
    if args.feature_shape:
        try:
            shape = tuple(int(d) for d in args.feature_shape.split(","))
            if any(d < 1 for d in shape):
                raise ValueError
        except ValueError:
            problems.append(f"The value of `--feature-shape` is {args.feature_shape!r}, but must be sizes like 8,8.")
    if problems:
        raise UsageError(*problems)
    storage.preflight(storage.Location(args.dest, args.endpoint))
    source = storage.Location(args.source, args.endpoint)
    if data.is_mnist_source(source):
        given = [f for f, v in (("--label", args.label), ("--features", args.features), ("--feature-shape", shape),
                                ("--task", args.task)) if v]
        if given:
            raise UsageError(f"`{given[0]}` applies to CSV and Parquet sources; {args.source} is MNIST.")
        prepared = data.mnist_dataset(data.source_for(source), args.validation_fraction)
    else:
        if not args.label:
            raise UsageError(f"Staging {args.source} needs `--label COLUMN`: the column to predict.")
        features = [c.strip() for c in args.features.split(",") if c.strip()] if args.features else None
        prepared = data.table_dataset(data.TableSource(source), args.label, features, shape,
                                      args.task, args.validation_fraction, args.test_fraction, args.seed)
    dest = storage.Location(args.dest, args.endpoint)
    existing = data.read_manifest(dest)
    if existing is not None:
        if not prepared.matches(existing):
            raise UsageError(f"Another dataset is staged at {args.dest} already; choose another --dest, or delete "
                             "that one first.")
        print(f"Already staged at {args.dest}: the same source and settings.")
        return 0
    manifest = prepared.write(dest)
    rows = ", ".join(f"{k} {v['rows']}" for k, v in manifest["splits"].items())
    label = manifest["label"]
    what = (f"{len(label['classes'])} classes" if label["task"] == "classification" else "regression")
    sizes = "x".join(map(str, manifest["features"]["shape"]))
    print(f"Staged {manifest['dataset']} ({what}, features {sizes} {manifest['features']['dtype']}) from "
          f"{manifest['source']} at {args.dest}: {rows} rows.")
    return 0


def cmd_report(args) -> int:
    from tuner import report

    where = storage.Location(args.storage, args.endpoint)
    if not where.join(args.name, results.SUMMARY).exists():
        raise UsageError(f"No summary at {where.join(args.name, results.SUMMARY)}; "
                         "has `tuner tune` finished for that --name and --storage?")
    print(report.write_report(where, args.name))
    return 0


def cmd_best(args) -> int:
    where = storage.Location(args.storage, args.endpoint)
    try:
        summary = results.read_summary(where, args.name)
    except FileNotFoundError:
        raise UsageError(f"No summary at {where.join(args.name, results.SUMMARY)}; "
                         "has `tuner tune` finished for that --name and --storage?") from None
    front = summary.get("pareto_front")
    if args.pick and front is None:
        raise UsageError(f"`--pick` chooses among a Pareto front, but `{args.name}` followed one objective; leave it "
                         "out for its best trial.")
    if front is not None:
        objectives = summary["objectives"]
        if args.pick:
            modes = {o["metric"]: o["mode"] for o in objectives}
            if args.pick not in modes:
                raise UsageError(f"The value of `--pick` is {args.pick!r}, but must be one of the objectives: "
                                 f"{', '.join(modes)}.")
            print(json.dumps(results.pick(front, args.pick, modes[args.pick]), indent=2))
            return 0
        print(results.front_table(front, objectives))
        return 0
    print(json.dumps(summary["best"], indent=2))
    replay = (summary["best"] or {}).get("replay")
    if replay:
        print(f"Its hyperparameter schedule, replayed from scratch (run where the experiment was started):\n"
              f"  {replay['command']}")
    return 0


def cmd_run(args, argv: list[str], search: bool, stop: StopOnSignal | None = None, filter_stderr: bool = False) -> int:
    if filter_stderr and args.console != "verbose":
        # From here on: TensorFlow starts in this process (the builder's check, the test
        # scoring) and in every worker, and Ray forwards the workers' lines to this one.
        stderr_filter.start()
    plan = experiment.prepare(
        args.config, args.overrides,
        {"name": args.name, "storage.uri": args.storage, "storage.endpoint": args.endpoint},
        args.address, args.working_dir, search, ["tuner", *argv])
    spec = plan.spec
    if plan.state == "finished":
        uri = storage.join(spec.experiment_uri(), results.SUMMARY)
        best = results.read_summary(spec.storage.location, spec.name)["best"]
        print(f"The experiment `{spec.name}` already finished with this spec; its summary: {uri}")
        print(json.dumps(best, indent=2))
        return 0 if best is not None else 1
    held = experiment.hold(plan)  # one run of the experiment at a time
    try:
        return _run_held(args, plan, stop)
    finally:
        held.release()


def _run_held(args, plan: experiment.Plan, stop: StopOnSignal | None) -> int:
    spec = plan.spec
    for line in plan.warnings:
        print(f"tuner: warning: {line}", file=sys.stderr)
    say = print if args.console != "quiet" else (lambda *a, **k: None)
    if spec.scaling.use_gpu:
        stderr_filter.keep_gpu_errors()

    cluster = experiment.connect(plan, args.address, args.console)
    if stop:
        stop.install()  # ray.init replaced the SIGTERM handler
    say(f"Running up to {cluster.concurrent} trial(s) at once, each {cluster.trial.describe()}.", flush=True)
    if plan.pending is not None:
        say(f"Staging MNIST from {spec.data.source} to {spec.dataset_uri()} ...", flush=True)
    experiment.stage(plan)
    if (tracked := experiment.tracking_target(plan)) is not None:
        say(f"Tracking in MLflow at {tracked.uri}, experiment {tracked.experiment!r}.", flush=True)
    if plan.resume:
        what = "interrupted experiment" if plan.state == "interrupted" else "failed trials of the experiment"
        say(f"Resuming the {what} `{spec.name}` from {spec.experiment_uri()}: "
            "finished trials are kept, unfinished ones continue from their latest checkpoints.", flush=True)
    try:
        grid, scheduler = experiment.run(plan, cluster, stop, args.console)
    except KeyboardInterrupt:
        experiment.track_interrupted(plan)
        raise
    summary, uri = experiment.summarize(plan, cluster, grid, scheduler)
    tracked = experiment.track(plan, summary)
    experiment.disconnect()
    return _print_outcome(spec, summary, uri, tracked)


def _print_outcome(spec, summary: dict, uri: str, tracked: str | None) -> int:
    """The failed trials and the best one; the exit code (1: no trial finished an epoch)."""
    best = summary["best"]
    failed = [t for t in summary["trials"] if t["status"] == "error"]
    if failed:
        print(f"{len(failed)} of {len(summary['trials'])} trial(s) failed (listed in {uri}):", file=sys.stderr)
        for t in failed:
            print(f"  {t['trial_id']}: {t.get('error')}", file=sys.stderr)
    if best is None:
        print(f"No trial finished an epoch; see {uri}.", file=sys.stderr)
        return 1
    metric = spec.objective.metric
    if summary.get("pareto_front") is not None:
        print(results.front_table(summary["pareto_front"], summary["objectives"]))
    tests = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k.startswith("test_") and isinstance(v, float))
    print(
        f"Best trial {best['trial_id']}: {metric} {best[metric]:.4f}, {tests} (epoch {best['epoch']})\n"
        f"  config: {json.dumps(best['config'], sort_keys=True)}\n"
        f"  checkpoint: {best['checkpoint_uri']}\n  summary: {uri}"
        + (f"\n  MLflow: {tracked}" if tracked else "")
        + (f"\n  its schedule, replayed from scratch: {best['replay']['command']}" if best.get("replay") else "")
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
