"""zoft's MeZO step next to the MeZO paper's loop and the `mezo` package, side by side in one run.

    flock /tmp/zoft-cpu.lock .venv/bin/python benchmarks/peers_mezo.py [--model minilm] [--batch-size 16]
                                                                       [--repeats 10]

The paper's loop is written the way princeton-nlp/MeZO's trainer (large_models/trainer.py, zo_perturb_parameters,
zo_forward, zo_step, zo_update) does it: the global RNG reseeded with torch.manual_seed before each of the four
passes over the parameters, a fresh torch.normal tensor per parameter, `param.data = param.data + ...` (not in
place), a separate inference_mode forward for each loss, the projected gradient read with .item(). The `mezo`
package (PyPI mezo 0.0.1, `update`) is measured where it imports: it declares transformers < 5, so it is not in
zoft's environment; `pip download mezo --no-deps` then unzipping the wheel into a folder on PYTHONPATH makes it
importable (its mezo.py needs torch only). Every variant: same model, MRPC batch, lr 1e-6, eps 1e-3, no weight
decay, constant rate, LoRA (zoft's default config) or all weights. Time: medians of interleaved repetitions
(the order reversing every round); the ratio is the median over the rounds of the two steps' ratio in that
round (quartiles beside it), which cancels the shared machine's drifts; peak memory: each variant in a fresh
process (benchmarks/mezo_speed_memory.py's measure). Ratios zoft ÷ peer, target ≤ 1.00.
"""

from __future__ import annotations

import argparse
import json

import mezo_speed_memory as reference
import numpy as np
import torch
import transformers

from zoft.measure import pick_device

LR, EPS = 1e-6, 1e-3
PEERS = ("paper", "package")

try:
    import mezo.mezo as mezo_package
except ImportError:
    mezo_package = None


class PaperLoop:
    """MeZO as princeton-nlp/MeZO's trainer steps it (weight decay 0, so the decay branch is left out)."""

    def __init__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
        self.model, self.batch = model, batch
        self.named_parameters_to_optim = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def zo_perturb_parameters(self, scaling_factor: float) -> None:
        torch.manual_seed(self.zo_random_seed)
        for _, param in self.named_parameters_to_optim:
            z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
            param.data = param.data + scaling_factor * z * EPS

    def zo_forward(self) -> torch.Tensor:
        self.model.eval()
        with torch.inference_mode():
            return self.model(**self.batch).loss.detach()

    def step(self) -> torch.Tensor:
        self.zo_random_seed = np.random.randint(1000000000)
        self.zo_perturb_parameters(scaling_factor=1)
        loss1 = self.zo_forward()
        self.zo_perturb_parameters(scaling_factor=-2)
        loss2 = self.zo_forward()
        projected_grad = ((loss1 - loss2) / (2 * EPS)).item()
        self.zo_perturb_parameters(scaling_factor=1)
        torch.manual_seed(self.zo_random_seed)  # zo_update
        for _, param in self.named_parameters_to_optim:
            z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
            param.data = param.data - LR * projected_grad * z
        return loss1


def variants() -> list[str]:
    peers = [peer for peer in PEERS if peer != "package" or mezo_package is not None]
    return [f"{kind}-{params}" for params in ("lora", "all") for kind in ("mezo", *peers)]


def setup(variant: str, args: argparse.Namespace, device: torch.device):
    """A one-step function per variant (the signature of mezo_speed_memory.setup, whose MeZO variants these are)."""
    kind, params = variant.split("-")
    if kind == "mezo":
        return reference.setup(variant, args, device)
    model, batch = reference.mezo_model_and_batch(params, args, device)
    if kind == "paper":
        loop = PaperLoop(model, batch)
        return loop.step, loop
    model.eval()
    seeds = iter(range(10**9))

    def package_step() -> torch.Tensor:
        return mezo_package.update(model, batch, lambda m, inputs: m(**inputs).loss, EPS, LR, next(seeds))

    return package_step, model


def measure_times(args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    """Seconds per step of every variant, sample i of each from round i."""
    steps = {variant: setup(variant, args, device)[0] for variant in variants()}
    return reference.interleaved_samples(steps, args.repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    reference.add_shared_arguments(parser, repeats=10)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = pick_device(args.device)
    if args.memory_of:
        print(json.dumps({"peak_bytes": reference.measure_peak_memory(args.memory_of, args, device, build=setup)}))
        return
    peaks = {variant: reference.peak_memory_in_fresh_process(variant, args, script=__file__) for variant in variants()}
    samples = measure_times(args, device)
    times = {variant: float(np.median(values)) for variant, values in samples.items()}
    kind = "GPU allocator peak" if device.type == "cuda" else "peak RSS over the steps"
    print(f"model {args.model}, batch {args.batch_size}, device {device}, threads {torch.get_num_threads()}; "
          f"time: median of {args.repeats} interleaved steps; memory: fresh process, {kind}")
    if mezo_package is None:
        print("mezo package: not importable here (declares transformers < 5; see the docstring), skipped")
    print(f"{'variant':<15}{'s/step':>9}{'peak MB':>10}")
    for variant in variants():
        print(f"{variant:<15}{times[variant]:>9.4f}{peaks[variant] / 2**20:>10.1f}")
    print()
    for variant in variants():
        kind, params = variant.split("-")
        if kind != "mezo":
            ours = f"mezo-{params}"
            median, low, high = reference.paired_ratio(samples[ours], samples[variant])
            print(f"MeZO({params}) zoft ÷ {kind}: time {median:.3f} (quartiles {low:.3f}–{high:.3f}; ratio of "
                  f"medians {times[ours] / times[variant]:.3f}), peak {peaks[ours] / peaks[variant]:.3f}"
                  f"   (target ≤ 1.00)")


if __name__ == "__main__":
    main()
