"""The methods' names, in one table: what `zoft compare --methods`, run folders and presets call each method,
the config keys it stands for, and the label a report shows.

Imports nothing of zoft's, so that the config schema (which accepts ``method=mezo-lora``) can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from zoft.errors import ZoftError

LABEL_WIDTH = 24  # a custom MeZO parameter pattern is cut to this in labels: legends and tables stay readable


@dataclass(frozen=True)
class MethodName:
    name: str  # compare's --methods, the run folder, a preset's suffix: mezo-lora
    method: str  # the config key `method`
    params: str | None  # the config key `params` (what MeZO trains); None for the backprop methods
    label: str  # what a report calls it: MeZO (LoRA)

    def keys(self) -> dict[str, str]:
        return {"method": self.method, **({"params": self.params} if self.params else {})}


METHODS = (
    MethodName("lora", "lora", None, "LoRA"),
    MethodName("full", "full", None, "Full FT"),
    MethodName("mezo-lora", "mezo", "lora", "MeZO (LoRA)"),
    MethodName("mezo-full", "mezo", "all", "MeZO (all)"),
)
ALIASES = {"mezo-all": "mezo-full"}  # also accepted as method= in a config, never written
DEFAULT_COMPARED = ("lora", "mezo-lora")


def lookup(name: str) -> MethodName:
    """The method `name` stands for; a ZoftError lists the known names (aliases are for configs only, so
    that a method has one run folder)."""
    for method in METHODS:
        if method.name == name:
            return method
    raise ZoftError(f"unknown method '{name}' for compare; known: {', '.join(m.name for m in METHODS)}")


def _known(method: str, params: str | None) -> MethodName | None:
    params = (params or "lora") if method == "mezo" else None  # MeZO trains LoRA adapters unless told otherwise
    return next((m for m in METHODS if (m.method, m.params) == (method, params)), None)


def name_of(method: str, params: str | None) -> str:
    """The name of a method and params: a known one (mezo-lora), else mezo-<params> for a custom subset."""
    known = _known(method, params)
    return known.name if known else f"{method}-{params}"


def label_of(method: str, params: str | None) -> str:
    """The report label: LoRA, Full FT, MeZO (LoRA), MeZO (all), or MeZO (<pattern>) for a custom subset."""
    known = _known(method, params)
    if known:
        return known.label
    if method != "mezo":
        return method
    pattern = str(params)
    return f"MeZO ({pattern if len(pattern) <= LABEL_WIDTH else pattern[: LABEL_WIDTH - 1] + '…'})"


def config_aliases() -> dict[str, tuple[str, str]]:
    """method=<name> values that also set params (method=mezo-lora means method=mezo params=lora)."""
    aliased = {m.name: (m.method, m.params) for m in METHODS if m.params}
    return {**aliased, **{alias: aliased[target] for alias, target in ALIASES.items()}}
