"""The packaged presets: YAML files of config keys, each for one method, named ``<name>-<method>.yaml``.

- ``paper-kshot-<method>``: the MeZO paper's k-shot protocol (RoBERTa-large, prompt-based) for lora,
  full, mezo-lora and mezo-full; ``--preset paper-kshot`` gives each compared method its own.
- ``mrpc-prompt-<method>``: the study's comparison (MRPC, full training data, prompt-based LoRA against
  MeZO (LoRA)); `zoft compare --task mrpc` picks it for any masked LM.
- ``<task>-<model>-<method>``: what a sweep chose on validation for that task and model, picked
  automatically by `zoft compare` and `zoft sweep`.

Each file's header says where its settings come from and which command runs it.
"""

from __future__ import annotations

from pathlib import Path

from zoft.errors import ZoftError

FOLDER = Path(__file__).parent


def names() -> list[str]:
    return sorted(path.stem for path in FOLDER.glob("*.yaml"))


def packaged(task: str, model: str, head: str, method: str) -> Path | None:
    """The preset picked without asking for one: a sweep's choice for this task and model, else the task's
    preset for its head (the study's prompt-based MRPC comparison)."""
    for name in (f"{task}-{model.replace('/', '--')}-{method}", f"{task}-{head}-{method}"):
        path = FOLDER / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def find(value: str, methods: list[str]) -> list[Path]:
    """The preset files `value` names: a file, a packaged preset, or a family of them (``paper-kshot``: one
    ``paper-kshot-<method>.yaml`` for each of `methods`)."""
    path = Path(value).expanduser()
    if path.is_file():
        return [path]
    if (FOLDER / f"{value}.yaml").is_file():
        return [FOLDER / f"{value}.yaml"]
    members = sorted(member.stem for member in FOLDER.glob(f"{value}-*.yaml"))
    if members and not methods:
        raise ZoftError(f"--preset {value} is a family of presets, one a method; name one: {', '.join(members)}")
    family = {method: FOLDER / f"{value}-{method}.yaml" for method in methods}
    found = [path for path in family.values() if path.is_file()]
    if not found:
        raise ZoftError(f"--preset {value}: no such file, and no packaged preset of that name; packaged: "
                        f"{', '.join(names())}")
    missing = [method for method, path in family.items() if not path.is_file()]
    if missing:
        raise ZoftError(f"--preset {value}: the family has no preset for {', '.join(missing)} (it has "
                        f"{', '.join(members)})")
    return found

