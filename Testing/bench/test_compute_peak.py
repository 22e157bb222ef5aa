"""The machine's matrix-multiply peak and the compute floor that `segmate bench` reads each network row against."""
from __future__ import annotations

import pytest
import torch

from segmatecore.bench.configs import PEER_MODEL
from segmatecore.bench.machine import add_compute_floors
from segmatecore.bench.compute_peak import compute_floor_s, machine_peaks, matmul_gmacs_per_s


def test_the_peak_is_the_best_round_in_multiply_accumulates_per_second():
    # warm-up is not timed; rounds take 0.5, 0.25 and 1.0 s on this clock
    ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 3.0])
    rate = matmul_gmacs_per_s(torch.float32, size=64, rounds=3, clock=lambda: next(ticks))
    assert rate == pytest.approx(64 ** 3 / 0.25 / 1e9)


def test_the_measurement_restores_the_callers_thread_count():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    matmul_gmacs_per_s(torch.float32, size=32, rounds=1, threads=other)
    assert torch.get_num_threads() == before


def test_this_machine_has_a_positive_peak_for_each_precision_the_rows_run():
    peaks = machine_peaks(threads=1, quick=True)
    assert set(peaks) == {"float32", "bfloat16"}
    assert all(rate > 0.1 for rate in peaks.values())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        matmul_gmacs_per_s(size=0)
    with pytest.raises(ValueError, match="positive"):
        compute_floor_s(9.1, 162, 0.0)


def test_each_network_row_and_the_peer_get_their_floor_at_their_own_thread_count():
    rows = [
        {"name": "a", "model": "fastvit_t12", "scope": "network", "dtype": "float32", "threads": 2,
         "gmacs_per_slice": 9.0, "s_network": 18.0},
        {"name": "b", "model": "fastvit_t12", "scope": "network", "dtype": "bfloat16", "threads": 2,
         "gmacs_per_slice": 9.0, "s_network": 24.0},
        {"name": "c", "model": "fastvit_t12", "scope": "network", "dtype": "bfloat16", "threads": 1,
         "gmacs_per_slice": 9.0, "s_network": 45.0},
        {"name": "d", "model": "fastvit_t12", "scope": "end_to_end", "dtype": "float32", "threads": 2,
         "gmacs_per_slice": 9.0, "s_network": 10.0},  # the main pass only: no floor
        {"name": "e", "model": PEER_MODEL, "kind": "peer", "scope": "end_to_end", "dtype": "float32", "threads": 2,
         "gmacs_per_slice": 80.0, "s_network": 200.0},
    ]
    calls = []

    def peaks(threads):
        calls.append(threads)
        return {"float32": 160.0 * threads / 2, "bfloat16": 80.0 * threads / 2}

    measured = add_compute_floors(rows, depth=162, device="cpu", quick=True, peaks=peaks)
    assert calls == [2, 1] and measured == {"2": {"float32": 160.0, "bfloat16": 80.0},
                                           "1": {"float32": 80.0, "bfloat16": 40.0}}
    a, b, c, d, e = rows
    assert a["compute_floor_s"] == pytest.approx(9.0 * 162 / 160.0)
    assert a["pct_of_peak"] == pytest.approx(100 * 9.0 * 162 / 160.0 / 18.0, abs=0.1)
    assert b["compute_floor_s"] == pytest.approx(9.0 * 162 / 80.0, abs=1e-3)
    assert c["compute_floor_s"] == pytest.approx(9.0 * 162 / 40.0, abs=1e-3)
    assert "compute_floor_s" not in d and "pct_of_peak" not in d
    assert e["pct_of_peak"] == pytest.approx(100 * 80.0 * 162 / 160.0 / 200.0, abs=0.1)


def test_a_clock_that_never_advances_does_not_divide_by_zero():
    rate = matmul_gmacs_per_s(torch.float32, size=8, rounds=2, clock=lambda: 1.0)
    assert rate > 0


def test_the_peaks_read_as_one_line_per_run():
    from segmatecore.bench.compute_peak import peaks_text

    assert peaks_text({"2": {"float32": 165.3, "bfloat16": 83.2}, "1": {"float32": 83.0, "bfloat16": 41.3}}) == \
        "2 threads: float32 165 GMAC/s, bfloat16 83 GMAC/s; 1 thread: float32 83 GMAC/s, bfloat16 41 GMAC/s"
