"""Forward-pass counting, peak memory and timing."""

import sys
import time

import psutil
import pytest
import torch

from zoft.errors import ZoftError
from zoft.measure import (
    ForwardCounter,
    MemoryReport,
    PeakRSS,
    Stopwatch,
    measure_memory,
    pick_device,
    process_peak_rss,
)

CPU = torch.device("cpu")
MB = 1024 * 1024


def test_forward_counter_counts_model_calls_not_submodule_calls():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    counter = ForwardCounter(model)
    x = torch.zeros(3, 2)
    for _ in range(3):
        model(x)
    assert counter.count == 3
    model[0](x)  # a submodule alone is not a forward pass of the model
    assert counter.count == 3


def test_forward_counter_pauses():
    model = torch.nn.Linear(2, 2)
    counter = ForwardCounter(model)
    model(torch.zeros(1, 2))
    with counter.paused():
        model(torch.zeros(1, 2))
        model(torch.zeros(1, 2))
    model(torch.zeros(1, 2))
    assert counter.count == 2
    assert counter.enabled


def test_forward_counter_resumes_after_an_exception_while_paused():
    model = torch.nn.Linear(2, 2)
    counter = ForwardCounter(model)
    with pytest.raises(ValueError), counter.paused():
        raise ValueError
    model(torch.zeros(1, 2))
    assert counter.count == 1


def test_forward_counter_remove():
    model = torch.nn.Linear(2, 2)
    counter = ForwardCounter(model)
    model(torch.zeros(1, 2))
    counter.remove()
    model(torch.zeros(1, 2))
    assert counter.count == 1


def test_peak_rss_sees_a_large_allocation():
    before = psutil.Process().memory_info().rss
    with PeakRSS() as rss:
        start = rss.peak
        block = torch.ones(50 * MB)  # 200 MB of float32, every page touched
        time.sleep(0.1)
        del block
    assert start >= before * 0.9  # the first sample is taken on entry
    assert rss.peak - start >= 150 * MB


def test_peak_rss_thread_stops():
    rss = PeakRSS(interval=0.001)
    with rss:
        pass
    assert not rss._thread.is_alive()
    assert rss.peak > 0


def test_measure_memory_fills_the_report():
    with measure_memory(CPU) as report:
        assert isinstance(report, MemoryReport)
        assert report.train_peak_rss_bytes == 0
        block = torch.ones(25 * MB)  # 100 MB of float32, every page touched
        time.sleep(0.1)  # held across several of the sampler's 20 ms intervals
        del block
    # Above the phase's own start, not above a threshold that the process's baseline (torch alone) meets.
    assert report.rss_at_train_start_bytes > 0
    assert report.train_peak_rss_bytes - report.rss_at_train_start_bytes >= 90 * MB
    assert report.process_peak_rss_bytes >= report.train_peak_rss_bytes * 0.9
    assert report.device == "cpu"
    data = report.to_dict()
    assert "cuda_max_allocated_bytes" not in data and "cuda_max_reserved_bytes" not in data
    assert data["train_peak_rss_bytes"] == report.train_peak_rss_bytes


def test_measure_memory_fills_the_report_when_the_block_raises():
    with pytest.raises(RuntimeError, match="boom"), measure_memory(CPU) as report:
        raise RuntimeError("boom")
    assert report.train_peak_rss_bytes > 0
    assert report.process_peak_rss_bytes > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap trimming")
def test_memory_freed_before_a_phase_does_not_count_as_the_phases():
    process = psutil.Process()
    before = process.memory_info().rss
    blocks = [torch.ones(16_000) for _ in range(3000)]  # 192 MB in 64 KB blocks: heap, not mmap
    del blocks
    with measure_memory(torch.device("cpu")) as report:
        pass
    assert report.rss_at_train_start_bytes < before + 50 * 2**20


def test_process_peak_rss_is_at_least_the_current_rss():
    assert process_peak_rss() >= psutil.Process().memory_info().rss * 0.9


def test_stopwatch_accumulates(one_second_clock):
    # Each reading of the clock is one second after the last: a section is exactly 1 s, never more or less.
    stopwatch = Stopwatch()
    with stopwatch.timing(CPU):
        pass
    assert stopwatch.seconds == 1.0
    with stopwatch.timing(CPU):
        pass
    assert stopwatch.seconds == 2.0


def test_stopwatch_counts_a_section_that_raises(one_second_clock):
    stopwatch = Stopwatch()
    with pytest.raises(KeyError), stopwatch.timing(CPU):
        raise KeyError
    assert stopwatch.seconds == 1.0


@pytest.fixture
def no_accelerator(monkeypatch):
    """A machine without CUDA or MPS, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_picks_cuda_then_mps_then_the_cpu(no_accelerator, monkeypatch):
    assert pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cpu") == torch.device("cpu")


def test_a_device_that_is_not_one_or_not_there_is_a_one_line_error(no_accelerator):
    with pytest.raises(ZoftError, match=r"^config key 'device': 'gpu0' is not a device \(auto, cpu, cuda, cuda:N, "
                                        r"mps\)$"):
        pick_device("gpu0")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ZoftError, match=f"^device '{name}' requested but torch sees no CUDA GPU$"):
            pick_device(name)
