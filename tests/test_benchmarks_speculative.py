"""benchmarks/speculative_full_size.py: each measurement takes the path it claims, with N tokens; and
benchmarks/gpu_check.py refuses without CUDA and survives a failing or hanging part."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.test_benchmarks_stage2 import _micro as _stage2_micro

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    try:
        yield _load("speculative_full_size")
    finally:
        sys.modules.pop("speculative_full_size", None)
        sys.modules.pop("stage2_step", None)


@pytest.fixture(scope="module")
def gpu_check():
    try:
        yield _load("gpu_check")
    finally:
        sys.modules.pop("gpu_check", None)


def _micro(stage2):
    """test_benchmarks_stage2's micro size, three utterances a batch."""
    return dataclasses.replace(_stage2_micro(stage2), batch=3)


def test_each_path_is_forced_and_figures_are_written(bench, monkeypatch, tmp_path):
    monkeypatch.setitem(bench.STAGE2.SIZES, "micro", _micro(bench.STAGE2))
    out = tmp_path / "spec.json"
    argv = ["--size", "micro", "--device", "cpu", "--batch", "3", "--seconds", "2", "--new-tokens", "4"]
    argv += ["--repeats", "1", "--warmup", "0", "--shares", "0.34,0.33,0.33", "--json", str(out)]
    threads = torch.get_num_threads()
    try:  # one thread: idle OpenMP threads spinning on a busy machine make this 30x slower
        result = bench.main([*argv, "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert result["audio_tokens"] == 21 and result["prompt_tokens"] == 3 + 21 + 14
    paths = result["paths"]
    assert paths["autoregressive"]["new_tokens"] == [4, 4, 4]  # EOS has no logit: exactly N tokens
    assert paths["ctc"]["paths"] == {"ctc": 3, "verified": 0, "fallback": 0}
    assert paths["verified"]["paths"] == {"ctc": 0, "verified": 3, "fallback": 0}
    assert paths["fallback"]["paths"] == {"ctc": 0, "verified": 0, "fallback": 3}
    assert paths["fallback"]["new_tokens"] == [4, 4, 4]  # from scratch: nothing resumed
    # one utterance per path: the gate set between the entropies, drafts only for the verified one
    assert (
        result["mixed"]["paths"]
        == result["mixed"]["target_paths"]
        == {"ctc": 1, "verified": 1, "fallback": 1}
    )
    for fig in [*paths.values(), result["mixed"]]:
        assert fig["rtfx"] == pytest.approx(3 * 2.0 / fig["seconds"])
    assert paths["autoregressive"]["speedup"] == 1.0
    assert 0.0 <= result["projection"]["break_even_fallback_share"] <= 1.0
    assert json.loads(out.read_text())["paths"]["fallback"]["paths"]["fallback"] == 3


def test_projection_by_hand(bench):
    seconds = {"autoregressive": 1.0, "ctc": 0.1, "verified": 0.2, "fallback": 1.2}
    p = bench.project(seconds, (0.5, 0.4, 0.1), audio_s=10.0)
    t = 0.5 * 0.1 + 0.4 * 0.2 + 0.1 * 1.2
    assert p["seconds"] == pytest.approx(t) and p["rtfx"] == pytest.approx(10.0 / t)
    accepted = (0.5 * 0.1 + 0.4 * 0.2) / 0.9  # (1 - f) accepted + f 1.2 = 1.0
    assert p["break_even_fallback_share"] == pytest.approx((1.0 - accepted) / (1.2 - accepted))
    assert p["break_even_fallback_share_no_ctc"] == pytest.approx(0.8)
    cheap = bench.project(dict(seconds, fallback=0.9), (0.5, 0.4, 0.1), audio_s=10.0)
    assert cheap["break_even_fallback_share"] == 1.0  # even all-fallback is faster than plain decoding


def test_shares_must_sum_to_one(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--shares", "0.5,0.5,0.5"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_check_refuses_without_cuda(gpu_check, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main([str(tmp_path / "out.json")])
    assert exit_info.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_gpu_check_records_failed_and_hanging_parts(gpu_check, tmp_path):
    failed = gpu_check.run_part(
        "fails", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], 30.0, tmp_path / "f.log"
    )
    assert failed["status"] == "failed" and failed["returncode"] == 3 and "boom" in failed["error"]
    hangs = gpu_check.run_part(
        "hangs",
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
        1.0,
        tmp_path / "h.log",
    )
    assert hangs["status"] == "timeout" and hangs["wall_s"] < 15 and "started" in hangs["error"]
    assert (tmp_path / "h.log").read_text() == "started\n"
    ok = gpu_check.run_part("ok", [sys.executable, "-c", "pass"], 30.0, tmp_path / "o.log")
    assert ok["status"] == "ok"
    lines = gpu_check.summary_lines({"parts": {"stage2": hangs, "encoder": failed}})
    assert "timeout" in lines[2] and "killed after" in lines[2] and "boom" in lines[3]
