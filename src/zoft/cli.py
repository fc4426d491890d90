"""The `zoft` command: parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoft.config import build_config, config_keys
from zoft.errors import ZoftError


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Every config key as --key-name VALUE, plus free key=value overrides and a YAML file."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with config keys (nested by section or flat)")
    group = parser.add_argument_group("config keys (also accepted as key=value; see docs/config.md)")
    for key, (section, field) in config_keys().items():
        group.add_argument(f"--{key.replace('_', '-')}", dest=f"cfg.{key}", default=argparse.SUPPRESS,
                           metavar="VALUE", help=f"[{section}] {field.metadata['help']}")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {key[4:]: value for key, value in vars(args).items() if key.startswith("cfg.")}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ZoftError(f"expected KEY=VALUE, got '{item}'")
        overrides[key] = value
    return overrides


def default_out(config) -> Path:
    method = config.method.method + (f"-{config.method.params}" if config.method.method == "mezo" else "")
    return Path("runs") / f"{config.data.task}-{method}"


def run_train(args: argparse.Namespace) -> int:
    from zoft.console import Console
    from zoft.runs import RunFolder
    from zoft.train import Interrupted, train

    overrides = collect_overrides(args)
    if args.resume:
        if args.out is None:
            raise ZoftError("--resume needs --out, the run folder to continue")
        config = RunFolder(args.out).read_config()
        if overrides or args.config:
            raise ZoftError("--resume continues the run exactly as configured in its config.yaml; "
                            "drop the config options")
    else:
        config = build_config(args.config, overrides)
    out = Path(args.out) if args.out else default_out(config)
    try:
        summary = train(config, out, overwrite=args.overwrite, resume=args.resume, console=Console(quiet=args.quiet))
    except Interrupted:
        print(f"zoft: interrupted; a checkpoint was saved: continue with `zoft train --out {out} --resume`",
              file=sys.stderr)
        return 130
    return 1 if summary["status"] == "diverged" else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoft", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="fine-tune one model with one method into a run folder")
    train.add_argument("--out", help="run folder (default: runs/<task>-<method>)")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in the folder")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_config_options(train)
    train.set_defaults(handler=run_train)
    return parser


def quiet_libraries() -> None:
    """Hide the libraries' own progress bars and load reports; zoft reports what matters itself."""
    import warnings

    import transformers

    # PEFT calls transformers APIs that transformers has deprecated: nothing a zoft user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return args.handler(args)
    except ZoftError as error:
        print(f"zoft: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
