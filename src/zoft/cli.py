"""The `zoft` command: parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import transformers

from zoft import compare, distributed, presets, replay, sweep
from zoft.config import RunConfig, build_config, config_keys, load_yaml, to_yaml
from zoft.console import Console
from zoft.errors import ZoftError
from zoft.method_names import METHODS, name_of
from zoft.orchestrate import Processes, failure_message
from zoft.report import write_report
from zoft.runs import RunFolder, Status, Summary
from zoft.sinks import MetricSink, TensorBoardSink
from zoft.train import Interrupted, train


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Every config key as --key-name VALUE, plus free key=value overrides and a YAML file."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with config keys (nested by section or flat)")
    group = parser.add_argument_group("config keys (also accepted as key=value or in the --config file)")
    for key, (section, field) in config_keys().items():
        group.add_argument(f"--{key.replace('_', '-')}", dest=f"cfg.{key}", default=argparse.SUPPRESS,
                           metavar="VALUE", help=f"[{section}] {field.metadata['help']}")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The --config file's keys, then --key value options, then KEY=VALUE overrides (later ones win)."""
    overrides = load_yaml(args.config) if args.config else {}
    overrides.update({key[4:]: value for key, value in vars(args).items() if key.startswith("cfg.")})
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ZoftError(f"expected KEY=VALUE, got '{item}'")
        overrides[key] = value
    return overrides


def preset_file(args: argparse.Namespace) -> Path | None:
    """The one preset of train and sweep: a file or a packaged preset's name."""
    return presets.find(args.preset, [])[0] if args.preset else None


def default_out(config: RunConfig) -> Path:
    return Path("runs") / f"{config.data.task}-{name_of(config.method.method, config.method.params)}"


def run_train(args: argparse.Namespace) -> int:
    overrides = collect_overrides(args)
    if args.resume:
        if args.out is None:
            raise ZoftError("--resume needs --out, the run folder to continue")
        RunFolder(args.out).check(overwrite=args.overwrite, resume=True)
        config = RunFolder(args.out).read_config()
        if overrides or args.preset:
            raise ZoftError("--resume continues the run exactly as configured in its config.yaml; "
                            "drop the config options")
    else:
        preset = preset_file(args)
        config = build_config(overrides={**(load_yaml(preset) if preset else {}), **overrides})
    if args.plan:
        print(to_yaml(config), end="")
        return 0
    if args.nproc is not None and args.nproc > 1 and distributed.world_size() == 1:
        # checked above, here, before any process starts; each process then joins the group from its environment
        problem = distributed.refusal(config)
        if problem is not None:
            raise ZoftError(problem)
        return distributed.launch(args.nproc, distributed.without_nproc(args.argv))
    out = Path(args.out) if args.out else default_out(config)
    summary = train(config, out, overwrite=args.overwrite, resume=args.resume, console=Console(quiet=args.quiet),
                    command=["zoft", *args.argv], sinks=extra_sinks(args, out))
    return 1 if summary.status == Status.DIVERGED else 0


def extra_sinks(args: argparse.Namespace, out: Path) -> list[MetricSink]:
    """The sinks beyond the run folder and the console that the command asks for: TensorBoard in <run>/tensorboard."""
    return [TensorBoardSink(out / "tensorboard")] if args.tensorboard else []


def train_callable(args: argparse.Namespace):
    """zoft.train.train with this command's console and command line, for compare and sweep."""
    def run(config, out: Path, *, overwrite: bool, resume: bool) -> Summary:
        return train(config, out, overwrite=overwrite, resume=resume, console=Console(quiet=args.quiet),
                     command=["zoft", *args.argv], sinks=extra_sinks(args, out))

    return run


def refuse_several_processes(command: str) -> None:
    if distributed.world_size() > 1:
        raise ZoftError(f"zoft {command} does not run under torchrun: run `zoft {command} --nproc N` instead, which "
                        "launches each run on N processes")


def child_processes(args: argparse.Namespace, configs: Sequence[RunConfig]) -> Processes | None:
    """How compare or sweep runs its trainings: in this process (None), or each in a child `zoft train` (several
    at once with --jobs, each on --nproc processes); what cannot run so is refused before anything starts."""
    jobs, nproc = getattr(args, "jobs", 1), args.nproc
    if jobs < 1 or (nproc is not None and nproc < 1):
        raise ZoftError("--jobs and --nproc take a number of at least 1")
    if jobs > 1 and nproc is not None and nproc > 1:
        raise ZoftError("--jobs and --nproc together are not supported: give each run several processes "
                        "(--nproc) or run several runs at once (--jobs), not both")
    if jobs == 1 and (nproc is None or nproc == 1):
        return None
    for config in configs if nproc and nproc > 1 else ():
        problem = distributed.refusal(config)
        if problem is not None:
            raise ZoftError(f"--nproc {nproc}, {compare.method_name(config)}: {problem}")
    return Processes(jobs=jobs, nproc=nproc if nproc and nproc > 1 else None,
                     options=("--tensorboard",) if args.tensorboard else ())


def run_compare(args: argparse.Namespace) -> int:
    refuse_several_processes("compare")
    overrides = collect_overrides(args)
    if args.budget_minutes is not None:
        overrides["max_minutes"] = args.budget_minutes
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    configs = compare.plan(methods, overrides, args.preset, args.budget_forwards)
    if args.plan:
        print(compare.describe_plan(configs), end="")
        return 0
    processes = child_processes(args, list(configs.values()))
    out = Path(args.out or f"runs/compare-{next(iter(configs.values())).data.task}")
    folders, failed = compare.run_all(configs, out, train_callable(args), overwrite=args.overwrite,
                                      console=Console(quiet=args.quiet), processes=processes)
    reported = [folder for folder in folders if RunFolder(folder).summary_path.is_file()]  # a failed one may have none
    if reported:
        report = write_report(reported, Path(args.report_dir) if args.report_dir else out / "report")
        print(f"report: {report}")
    if failed:
        print(failure_message(failed, len(folders), "compare"), file=sys.stderr)
        return 1
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    refuse_several_processes("sweep")
    grid = sweep.parse_grid(args.grid)
    points = sweep.plan(grid, collect_overrides(args), preset_file(args))
    if args.plan:
        print(compare.describe_plan({sweep.point_name(point): config for point, config in points}), end="")
        return 0
    processes = child_processes(args, [config for _, config in points])
    out = Path(args.out or f"runs/sweep-{points[0][1].data.task}-{compare.method_name(points[0][1])}")
    results, failed = sweep.run_sweep(points, out, train_callable(args), overwrite=args.overwrite,
                                      console=Console(quiet=args.quiet), processes=processes)
    tables = Path(args.report_dir) if args.report_dir else out
    best = sweep.finish(results, grid, tables)
    print(f"sweep table: {tables / 'sweep.md'}")
    print(f"best settings: {best}" if best else "no grid point completed: no best settings")
    if failed:
        print(failure_message(failed, len(points), "sweep"), file=sys.stderr)
        return 1
    return 0


def run_replay(args: argparse.Namespace) -> int:
    result = replay.replay(args.run, to_step=args.to, out=args.out)
    for warning in result.warnings:
        print(f"zoft: warning: {warning}", file=sys.stderr)
    print(f"step {result.step}: {result.path}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    folders = []
    for path in map(Path, args.runs):
        if (path / "report.md").is_file():
            print(f"report: skipping {path}, a report rather than a run", file=sys.stderr)
        else:
            folders.append(path)
    print(f"report: {write_report(folders, Path(args.out), title=args.title)}")
    return 0


PRESET_HELP = ("settings under the config options: a file of config keys or a packaged preset (e.g. "
               "paper-kshot-mezo-lora, the MeZO paper's k-shot MeZO (LoRA)); default for sweep: the packaged one "
               "for the task and model")
TENSORBOARD_HELP = ("also log every record to TensorBoard, in <run folder>/tensorboard (needs the tensorboard "
                    "package: pip install 'zoft[tensorboard]')")
NPROC_HELP = ("{what} data-parallel in N processes on this machine, launched through torchrun "
              "(torch.distributed.run; the same as `torchrun --standalone --nproc-per-node N -m zoft train ...`): MeZO "
              "exchanges scalars only (zo_parallel), backprop all-reduces gradients (DDP); rank 0 writes the run "
              "folder")
PLAN_HELP = "print the fully resolved config of each run and exit, loading no weights (a hub model: its config.json)"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `zoft: error:` line like every other error (exit status 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"zoft: error: {message}; see `{self.prog} --help`\n")


def add_run_options(parser: argparse.ArgumentParser, *, quiet: str,
                    overwrite: str = "replace runs already in the folder") -> None:
    """The options of the commands that train (train, compare, sweep), then every config key."""
    parser.add_argument("--overwrite", action="store_true", help=overwrite)
    parser.add_argument("--quiet", action="store_true", help=quiet)
    parser.add_argument("--plan", action="store_true", help=PLAN_HELP)
    parser.add_argument("--tensorboard", action="store_true", help=TENSORBOARD_HELP)
    add_config_options(parser)
    parser.epilog = STOP_HELP


STOP_HELP = ("Ctrl-C, SIGTERM (sent by SLURM, Kubernetes, timeout) and SIGHUP stop a run after the current step: "
             "the checkpoint and summary.json (status interrupted) are written, and the command exits with 128 + the "
             "signal's number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP); a second signal stops at once, "
             "and the last periodic checkpoint stays. Continue with --resume (train) or the same command "
             "(compare, sweep).")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="zoft", description="Fine-tune Hugging Face models by backprop (LoRA, full) and by MeZO "
                    "(forward passes only), measure them alike, and compare them in one report.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="fine-tune one model with one method into a run folder")
    train.add_argument("--out", help="run folder (default: runs/<task>-<method>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--preset", metavar="FILE|NAME", help=PRESET_HELP)
    train.add_argument("--nproc", type=int, metavar="N", help=NPROC_HELP.format(what="train"))
    add_run_options(train, overwrite="replace a run already in the folder", quiet="print nothing but errors")
    train.set_defaults(handler=run_train)

    compare = commands.add_parser("compare", help="run several methods on identical data, then write the report")
    compare.add_argument("--methods", default="lora,mezo-lora",
                         help=f"comma-separated: {', '.join(m.name for m in METHODS)} (default: lora,mezo-lora)")
    compare.add_argument("--out", help="folder for the runs and the report (default: runs/compare-<task>)")
    compare.add_argument("--report-dir", help="folder for report.md and its plots (default: <out>/report)")
    compare.add_argument("--budget-minutes", type=float, help="stop each method after this many minutes of training")
    compare.add_argument("--budget-forwards", type=int,
                         help="give each method this many forward passes (sets its steps)")
    compare.add_argument("--preset", action="append", default=[], metavar="FILE|NAME",
                         help="a method's settings: a file (e.g. a sweep's best.yaml), a packaged preset, or a family "
                              "of them (paper-kshot: the MeZO paper's settings for each method); may be repeated")
    compare.add_argument("--nproc", type=int, metavar="N",
                         help=NPROC_HELP.format(what="train each method") + "; each run is a child `zoft train "
                              "--nproc N`, its console in <run folder>/train.log")
    add_run_options(compare, quiet="print nothing but errors and the report path")
    compare.set_defaults(handler=run_compare)

    sweep = commands.add_parser("sweep", help="train a grid of settings, rank them on the validation split")
    sweep.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                       help="config keys and their values; the grid is their Cartesian product")
    sweep.add_argument("--out", help="sweep folder (default: runs/sweep-<task>-<method>)")
    sweep.add_argument("--report-dir", help="folder for the table, heat map and best.yaml (default: --out)")
    sweep.add_argument("--preset", metavar="FILE|NAME", help=PRESET_HELP)
    sweep.add_argument("--jobs", type=int, default=1, metavar="N",
                       help="train N grid points at once, each a child `zoft train` with its console in <run folder>/"
                            "train.log: on GPUs each pinned to one in turn (CUDA_VISIBLE_DEVICES; more points than "
                            "GPUs share them), on the CPU each given cores // N threads (default 1: one at a time, "
                            "in this process)")
    sweep.add_argument("--nproc", type=int, metavar="N",
                       help=NPROC_HELP.format(what="train each grid point") + "; each point is a child `zoft train "
                            "--nproc N`, its console in <run folder>/train.log (not with --jobs)")
    add_run_options(sweep, quiet="print nothing but errors and the result paths")
    sweep.set_defaults(handler=run_sweep)

    report = commands.add_parser("report", help="write the comparison report of existing run folders")
    report.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    report.add_argument("--out", default="report", help="folder for report.md and its plots (default: report)")
    report.add_argument("--title", help="the report's title")
    report.set_defaults(handler=run_report)

    replay = commands.add_parser("replay", help="rebuild a MeZO run's trainable tensors at a step from its seed "
                                 "trajectory, without a forward pass")
    replay.add_argument("run", metavar="RUN", help="a MeZO run folder (with start.safetensors and trajectory.bin)")
    replay.add_argument("--to", type=int, metavar="STEP", help="the step to rebuild (default: the last logged)")
    replay.add_argument("--out", help="safetensors file to write (default: RUN/replay-STEP.safetensors)")
    replay.set_defaults(handler=run_replay)
    return parser


# How to continue after a stop that saved a checkpoint, per command; {out} is the run folder that stopped.
CONTINUE_WITH = {
    "train": "a checkpoint was saved: continue with `zoft train --out {out} --resume{nproc}`",
    "compare": "run the same command again to continue the comparison",
    "sweep": "run the same command again to continue the sweep",
}


def quiet_libraries() -> None:
    """Hide the libraries' own progress bars and load reports; zoft reports what matters itself."""
    # PEFT calls transformers APIs that transformers has deprecated: nothing a zoft user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error already reported (2): a code, not an exception
        return stop.code if isinstance(stop.code, int) else 2
    args.argv = argv
    quiet_libraries()
    try:
        return args.handler(args)
    except ZoftError as error:
        print(f"zoft: error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        # on several processes, resumed by as many (the checkpoint holds their shares of the work)
        nproc = f" --nproc {distributed.world_size()}" if distributed.world_size() > 1 else ""
        print(f"zoft: interrupted{by_signal(stop.signum)}; "
              f"{CONTINUE_WITH[args.command].format(out=stop.folder, nproc=nproc)}", file=sys.stderr)
        return exit_code(stop.signum)
    except KeyboardInterrupt as stop:  # a second signal (StoppedAtOnce), or Ctrl-C outside the training loop
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"zoft: stopped{by_signal(signum)}; a run can be continued from its last checkpoint with --resume",
              file=sys.stderr)
        return exit_code(signum)


def by_signal(signum: int) -> str:
    """' by SIGTERM' for a signal other than Ctrl-C's, which needs no naming."""
    return "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"


def exit_code(signum: int) -> int:
    """A shell's code for a process ended by a signal, 128 + its number: 130 for Ctrl-C, 143 for SIGTERM, 129 for
    SIGHUP; schedulers and scripts read it as 'stopped, not failed'."""
    return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
