"""How many planted bugs the tests catch: a bounded mutation check of the training loop, the methods and the
report, with cosmic-ray (`pip install -e ".[mutation]"`). docs/testing.md has the numbers and reads them.

    .venv/bin/python benchmarks/mutation.py run --label before --lock /tmp/zoft-cpu.lock [--area train] [--only ID]
    .venv/bin/python benchmarks/mutation.py summary --label before
    .venv/bin/python benchmarks/mutation.py sample          # only to draw a new sample (scores then stop comparing)

A mutant is one small change to the source (`<` made `<=`, `and` made `or`, a number changed, a loop made to
run zero times, ...), made by cosmic-ray's operators; the tests kill it if they fail on it. Every mutant of an
area is not run, only a fixed sample (benchmarks/mutation-sample.json, drawn once with a seed): one mutant at
each of SAMPLE_SIZES[area] sites chosen at random, so that an area's score compares before and after. A
sampled mutant is found again by its operator and the text of its line, not by its position, so that source
edits elsewhere in the file leave it the same mutant; one whose line changed is reported as gone.

`run` copies the working tree (the files git would commit, untracked ones included) to a temporary folder and
mutates the copy there, never the working tree; for each mutant it runs only the area's test files (AREAS),
in a subprocess with pytest's -x and one torch thread, and writes the outcome (killed, survived, timeout,
gone) to benchmarks/results/mutation-<label>.json after each mutant: a run stopped half way, or run area by
area, keeps what it measured; `--only` reruns single mutants, `--tests` against other test files. With
`--lock FILE` each test run holds FILE's flock (the one this machine's test runs share), so other work runs
between mutants: do not also wrap the command in `flock FILE`, which would wait for itself.
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from cosmic_ray.commands.init import _all_work_items
from cosmic_ray.mutating import mutate_and_test
from cosmic_ray.work_item import MutationSpec, TestOutcome, WorkerOutcome

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "benchmarks" / "mutation-sample.json"
RESULTS = REPO / "benchmarks" / "results"
SEED = 17


@dataclass(frozen=True)
class Area:
    sources: tuple[str, ...]  # files, or folders whose *.py files are mutated
    tests: tuple[str, ...]  # run in this order (the fastest to fail first); those not present are left out
    sample_size: int


AREAS = {
    "train": Area(("src/zoft/train.py",), ("tests/test_golden.py", "tests/test_train.py", "tests/test_resume.py"),
                  26),
    "methods": Area(("src/zoft/methods",), ("tests/test_golden.py", "tests/methods", "tests/optim"), 22),
    "report": Area(("src/zoft/report",), ("tests/report",), 26),
}
# The tests that send real signals to a `python -m zoft` subprocess and wait for it (a minute together, most of
# test_train.py's time) are left out; the in-process stop and resume tests stay.
DESELECT = "not sigterm and not sighup and not second_signal and not killed_run"
# A mutant whose tests run this many times longer than on the unmutated code (plus a margin for a busy
# machine) is taken to loop forever: a timeout, which counts as killed.
TIMEOUT_FACTOR, TIMEOUT_MARGIN_S = 3.0, 30.0


# -- the mutants -------------------------------------------------------------------------------------------------

def area_modules(root: Path, area: Area) -> list[Path]:
    paths = []
    for source in area.sources:
        path = root / source
        paths += sorted(path.glob("*.py")) if path.is_dir() else [path]
    return paths


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the module's annotations are, as (line, column) in characters: with `from __future__ import
    annotations` they are never evaluated, so a mutant in one (`int | None` made `int + None`) cannot fail."""
    lines = source.splitlines()

    def position(line: int, byte_offset: int) -> tuple[int, int]:  # ast counts UTF-8 bytes, cosmic-ray characters
        return line, len(lines[line - 1].encode()[:byte_offset].decode())

    spans = []
    for node in ast.walk(ast.parse(source)):
        annotations = []
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            annotations.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            annotations.append(node.returns)
        spans += [(position(a.lineno, a.col_offset), position(a.end_lineno, a.end_col_offset)) for a in annotations]
    return spans


def enumerate_mutants(root: Path, module: Path) -> list[dict]:
    """Every mutant cosmic-ray's operators make in `module` outside annotations, each with its line's text and
    its rank among the mutants of the same operator on a line of the same text (what finds it again)."""
    source = module.read_text()
    lines = source.splitlines()
    spans = annotation_spans(source)
    mutants, seen = [], Counter()
    for item in _all_work_items([module], {}):
        spec = item.mutations[0]
        if any(start <= spec.start_pos < end for start, end in spans):
            continue
        line = lines[spec.start_pos[0] - 1].strip()
        key = (spec.operator_name, line)
        mutants.append({"file": str(module.relative_to(root)), "operator": spec.operator_name, "line_text": line,
                        "rank": seen[key], "line": spec.start_pos[0], "column": spec.start_pos[1],
                        "occurrence": spec.occurrence})
        seen[key] += 1
    return mutants


def draw_sample() -> dict:
    """For each area, SAMPLE_SIZES sites (a place cosmic-ray can mutate) at random, and at each one of the
    mutants there at random: sites rather than mutants, so that the ten replacements of each `+` do not
    crowd out the rest."""
    rng = random.Random(SEED)
    sample = {}
    for name, area in AREAS.items():
        sites = defaultdict(list)
        for module in area_modules(REPO, area):
            for mutant in enumerate_mutants(REPO, module):
                sites[mutant["file"], mutant["line"], mutant["column"]].append(mutant)
        chosen = rng.sample(sorted(sites), area.sample_size)
        for index, site in enumerate(sorted(chosen)):
            mutant = rng.choice(sites[site])
            sample[f"{name}-{index:02d}"] = {"area": name, **{k: mutant[k] for k in
                                                               ("file", "operator", "line_text", "rank", "line")},
                                             "sites_in_area": len(sites)}
    return sample


def locate(root: Path, mutant: dict) -> MutationSpec | None:
    """The sampled mutant in the source at `root` now, or None when its line is no longer there."""
    module = root / mutant["file"]
    matches = [m for m in enumerate_mutants(root, module)
               if m["operator"] == mutant["operator"] and m["line_text"] == mutant["line_text"]]
    if len(matches) <= mutant["rank"]:
        return None
    found = matches[mutant["rank"]]
    return MutationSpec(module, mutant["operator"], found["occurrence"], (found["line"], found["column"]),
                        (found["line"], found["column"] + 1))


# -- running them ------------------------------------------------------------------------------------------------

def copy_working_tree(destination: Path) -> None:
    """The files git would commit (untracked ones too), so that the copy's tests find their fixtures."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def test_command(root: Path, area: Area, tests: list[str]) -> str:
    """The area's tests; or `tests` whole (no test left out), to see whether tests outside the selection kill
    a survivor."""
    chosen = tests or [t for t in area.tests if (root / t).exists()]
    deselect = "" if tests else f"-k '{DESELECT}' "
    return f"{sys.executable} -m pytest -x -q -p no:cacheprovider --no-header {deselect}" + " ".join(chosen)


@contextmanager
def holding(lock: str | None) -> Iterator[None]:
    with open(lock, "a") if lock else nullcontext() as handle:
        if handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def first_failure(output: str) -> str | None:
    """The test that failed first, from pytest's short summary (-ra)."""
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return match.group(1) if match else None


def outcome_of(result) -> str:
    if result.worker_outcome == WorkerOutcome.NO_TEST:
        return "gone"
    if result.worker_outcome != WorkerOutcome.NORMAL:
        return "error"
    if result.output == "timeout":
        return "timeout"
    return "survived" if result.test_outcome == TestOutcome.SURVIVED else "killed"


def run_baseline(command: str, lock: str | None) -> float:
    with holding(lock):
        started = time.perf_counter()
        finished = subprocess.run(command, shell=True, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"the tests fail on the unmutated code, so no mutant can be judged:\n{finished.stdout[-3000:]}")
    return seconds


def load_results(label: str) -> dict:
    path = RESULTS / f"mutation-{label}.json"
    return json.loads(path.read_text()) if path.is_file() else {"runs": [], "areas": {}, "mutants": {}}


def save_results(label: str, results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"mutation-{label}.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def git_commit() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return commit.stdout.strip() + ("+uncommitted changes" if dirty else "")


def run(label: str, areas: list[str], only: list[str], lock: str | None, tests: list[str]) -> None:
    sample = json.loads(SAMPLE.read_text())
    chosen = {i: m for i, m in sample.items() if (not only or i in only) and m["area"] in areas}
    results = load_results(label)
    results["runs"].append({"commit": git_commit(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "mutants": sorted(chosen), "tool": f"cosmic-ray {version('cosmic-ray')}",
                            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                                       f"{platform.python_version()}, torch {version('torch')}"})
    env = {"PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "GLUE_DIR": os.environ.get("GLUE_DIR", str((REPO / ".." / "shared" / "glue_data").resolve()))}
    with tempfile.TemporaryDirectory(prefix="zoft-mutation-") as folder:
        root = Path(folder)
        copy_working_tree(root)
        os.environ.update(env, PYTHONPATH=str(root / "src"))
        os.chdir(root)  # cosmic-ray runs the tests in the current folder
        for name in areas:
            ids = [i for i in chosen if chosen[i]["area"] == name]
            if not ids:
                continue
            command = test_command(root, AREAS[name], tests)
            baseline = run_baseline(command, lock)
            timeout = TIMEOUT_FACTOR * baseline + TIMEOUT_MARGIN_S
            results["areas"][name] = {"tests": command.split("--no-header ", 1)[1], "baseline_seconds":
                                      round(baseline, 1), "timeout_seconds": round(timeout, 1)}
            print(f"{name}: {len(ids)} mutants; the tests take {baseline:.0f} s unmutated", flush=True)
            for mutant_id in ids:
                mutant = chosen[mutant_id]
                spec = locate(root, mutant)
                with holding(lock):
                    started = time.perf_counter()
                    result = mutate_and_test([spec], command, timeout) if spec else None
                    seconds = time.perf_counter() - started
                outcome = outcome_of(result) if result else "gone"
                line = spec.start_pos[0] if spec else None
                results["mutants"][mutant_id] = {
                    "outcome": outcome, "seconds": round(seconds, 1), "line": line,
                    "killed_by": first_failure(result.output or "") if outcome == "killed" else None,
                    "diff": [line for line in (result.diff or "").splitlines() if line[:1] in "+-"
                             and line[:3] not in ("---", "+++")] if result else [],
                }
                save_results(label, results)
                print(f"  {mutant_id} {outcome:8} {seconds:5.1f} s  {mutant['file']}:{line} {mutant['operator']}",
                      flush=True)


# -- the score ---------------------------------------------------------------------------------------------------

def summary(label: str) -> str:
    """The per-area table of docs/testing.md, then the survivors."""
    sample = json.loads(SAMPLE.read_text())
    results = load_results(label)
    rows = ["| area | sites | sampled | killed | timeout | survived | gone | not run | score |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in AREAS:
        ids = [i for i in sample if sample[i]["area"] == name]
        counts = Counter(results["mutants"].get(i, {}).get("outcome", "not run") for i in ids)
        judged = counts["killed"] + counts["timeout"] + counts["survived"]
        score = f"{(counts['killed'] + counts['timeout']) / judged:.0%}" if judged else "-"
        rows.append(f"| {name} | {sample[ids[0]]['sites_in_area']} | {len(ids)} | {counts['killed']} | "
                    f"{counts['timeout']} | {counts['survived']} | {counts['gone']} | {counts['not run']} | {score} |")
    rows += ["", "Survivors:"]
    for mutant_id, result in sorted(results["mutants"].items()):
        if result["outcome"] == "survived":
            mutant = sample[mutant_id]
            rows.append(f"- {mutant_id} {mutant['file']}:{result['line']} {mutant['operator']}: "
                        + " / ".join(result["diff"]))
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sample", help=f"draw the sample anew into {SAMPLE.relative_to(REPO)}")
    run_parser = commands.add_parser("run", help="run the sampled mutants against their area's tests")
    for sub in (run_parser, commands.add_parser("summary", help="print the scores and the survivors")):
        sub.add_argument("--label", required=True, help="names the results file, e.g. before or after")
    run_parser.add_argument("--area", action="append", choices=list(AREAS), help="only this area (repeatable)")
    run_parser.add_argument("--only", nargs="+", default=[], help="only these mutant ids, e.g. train-03")
    run_parser.add_argument("--lock", help="hold this file's flock during each test run")
    run_parser.add_argument("--tests", nargs="+", default=[], help="run these test files, whole, instead of the "
                            "area's (use another --label: the score is the area's tests')")
    args = parser.parse_args()
    if args.command == "sample":
        SAMPLE.write_text(json.dumps(draw_sample(), indent=1) + "\n")
    elif args.command == "run":
        run(args.label, args.area or list(AREAS), args.only, args.lock, args.tests)
    else:
        print(summary(args.label))


if __name__ == "__main__":
    main()
