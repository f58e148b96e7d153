"""One-command GPU check at full size: encoder step, stage-2 step, speculative decoding; one JSON.

    benchmarks/gpu_check.sh                          # -> work/gpu_check/gpu_check.json
    benchmarks/gpu_check.sh /tmp/h200.json           # the JSON elsewhere
    GT_VENV=/opt/venv benchmarks/gpu_check.sh        # another virtual environment (default .venv)
    .venv/bin/python benchmarks/gpu_check.py --parts speculative --budget 200

Four parts, each a subprocess under its own time cap (``--caps``), all within ``--budget``
seconds (default 530: under 9 minutes on one H100 / H200 with the start-up). A part that fails or
hangs is recorded with its error (``status``: ``ok`` / ``failed`` / ``timeout``) and the others
still run. Nothing is downloaded: every model is built with random weights.

1. ``encoder``: ``encoder_step.py --device cuda --sizes full --dtype bf16 --batch 16 --seconds 8``:
   our encoder's training step vs transformers' encoder (time ratio, MFU, peak memory).
2. ``stage2``: ``stage2_step.py --device cuda --sizes full``: the stage-2 training step at
   32 x 30 s in bf16 vs transformers' model (throughput, peak memory).
3. ``speculative``: ``speculative_full_size.py --device cuda``: the cost of each
   speculative-decoding path vs autoregressive decoding, 32 x 10 s, 30 tokens (RTFx, peak memory).
4. ``turboctc``: ``turboctc_step.py --device cuda --dtype bf16 --sizes full``: the training step of
   the full-size granite-speech-5.0 TurboCTC (16 x 1024, 16,384 BPE outputs) against the 4.0
   encoder of the same width and depth, 16 x 8 s.

The JSON (written after every part, so a killed run keeps what finished) holds each part's
figures (the benchmark's ``main`` return value), its command, wall time, status and log file
(next to the JSON), plus the GPU name, torch / transformers / CUDA versions and the git commit.
A summary table is printed at the end. Without a CUDA device the script exits at once (exit
status 2) with a message.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = REPO / "work" / "gpu_check" / "gpu_check.json"
NO_CUDA = "gpu_check: no CUDA device available (torch.cuda.is_available() is False); nothing run"

# name -> (script, argv, default cap in seconds)
PARTS: dict[str, tuple[str, list[str], float]] = {
    "encoder": (
        "encoder_step.py",
        ["--device", "cuda", "--sizes", "full", "--dtype", "bf16", "--batch", "16", "--seconds", "8"],
        90.0,
    ),
    "stage2": ("stage2_step.py", ["--device", "cuda", "--sizes", "full"], 200.0),
    "speculative": ("speculative_full_size.py", ["--device", "cuda"], 150.0),
    "turboctc": (
        "turboctc_step.py",
        [
            "--device",
            "cuda",
            "--dtype",
            "bf16",
            "--sizes",
            "full",
            "--bpe-vocab",
            "16384",
            "--batch",
            "16",
            "--seconds",
            "8",
        ],
        60.0,
    ),  # fmt: skip
}
KILL_GRACE_S = 10.0
MIN_PART_S = 15.0  # a part is not started with less of the budget left


# --------------------------------------------------------------------------------------------------
# one part: a subprocess under a time cap
# --------------------------------------------------------------------------------------------------
def _finite(value: Any) -> Any:
    """JSON-safe: NaN / inf -> None, tuples -> lists, anything else unknown -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def _child(script: str, json_path: str, argv: list[str]) -> None:
    """In the subprocess: run ``script``'s ``main(argv)`` and write its return value to ``json_path``."""
    path = HERE / script
    sys.argv = [str(path), *argv]  # its usage and error messages name the script
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    result = module.main(argv)
    Path(json_path).write_text(json.dumps(_finite(result), indent=2) + "\n")


def run_part(name: str, cmd: list[str], cap_s: float, log_path: Path, json_path: Path | None = None) -> dict:
    """Run ``cmd`` (own process group) for at most ``cap_s`` s, its output echoed and logged.

    Returns ``status`` (ok / failed / timeout), ``returncode``, ``wall_s``, ``cap_s``, ``log``, the
    command, ``error`` (the output's last lines, when not ok) and ``results`` (``json_path``'s
    content, when the part wrote it).
    """
    record: dict[str, Any] = {"command": cmd, "cap_s": cap_s, "log": str(log_path)}
    if json_path is not None and json_path.exists():
        json_path.unlink()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=30)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    print(f"\n######## {name}: {' '.join(cmd)}  (cap {cap_s:.0f} s)", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                start_new_session=True,  # its own process group: a timeout kills its children too
                text=True,
                errors="replace",
            )
        except OSError as err:
            return record | {"status": "failed", "returncode": None, "wall_s": 0.0, "error": repr(err)}

        def pump() -> None:
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                tail.append(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            proc.wait()
        reader.join(timeout=5.0)
    record.update(returncode=proc.returncode, wall_s=time.perf_counter() - start)
    results = None
    if json_path is not None and json_path.exists():
        try:
            results = json.loads(json_path.read_text())
        except ValueError as err:
            tail.append(f"gpu_check: unreadable part results {json_path}: {err}")
    if timed_out:
        record.update(status="timeout", error=f"killed after its cap of {cap_s:.0f} s\n" + "\n".join(tail))
    elif proc.returncode != 0 or (results is None and json_path is not None):
        record.update(status="failed", error="\n".join(tail))
    else:
        record["status"] = "ok"
    if results is not None:
        record["results"] = results
    print(f"######## {name}: {record['status']} in {record['wall_s']:.1f} s", flush=True)
    return record


# --------------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------------
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Versions and the commit; no CUDA call (the parts own the GPU while they run)."""
    import torch

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": _version("transformers"),
        "python": platform.python_version(),
        "host": platform.node(),
        "git_commit": _git("rev-parse", "HEAD") or os.environ.get("GT_COMMIT"),
        "git_dirty": None if status is None else bool(status),
    }


def gpu_info() -> dict[str, Any]:
    """The GPU's name and memory (after the parts: this process then holds a CUDA context)."""
    import torch

    try:
        props = torch.cuda.get_device_properties(0)
        return {
            "gpu": torch.cuda.get_device_name(0),
            "gpu_count": torch.cuda.device_count(),
            "gpu_memory_gib": props.total_memory / 2**30,
            "gpu_capability": f"{props.major}.{props.minor}",
        }
    except Exception as err:  # noqa: BLE001 - recorded, not fatal
        return {"gpu": None, "gpu_error": repr(err)}


# --------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------
def _first(results: Any) -> dict:
    if isinstance(results, list):
        return results[0] if results and isinstance(results[0], dict) else {}
    return results if isinstance(results, dict) else {}


def _num(value: Any, fmt: str, scale: float = 1.0) -> str:
    return "-" if not isinstance(value, int | float) else format(value * scale, fmt)


def summary_lines(report: dict) -> list[str]:
    gib = 2**-30
    lines = [
        f"GPU {report.get('gpu')}, torch {report.get('torch')}, transformers {report.get('transformers')}, "
        f"commit {(report.get('git_commit') or 'unknown')[:12]}{' (dirty)' if report.get('git_dirty') else ''}",
        f"{'part':12s} {'status':8s} {'wall s':>7s}  figures",
    ]
    for name, part in report["parts"].items():
        r = _first(part.get("results"))
        if not r:
            figures = ""
        elif name == "encoder":
            figures = (
                f"ours {_num(r.get('time_ours'), '.1f', 1e3)} ms/step, ours/ref {_num(r.get('time_ratio'), '.2f')}x, "
                f"MFU ours {_num(r.get('mfu_ours'), '.1f', 100)}% ref {_num(r.get('mfu_ref'), '.1f', 100)}%, "
                f"peak {_num(r.get('peak_memory_bytes'), '.1f', gib)} GiB"
            )
        elif name == "stage2":
            figures = (
                f"ours {_num(r.get('throughput_ours'), '.0f')} audio-s/s "
                f"(ref {_num(r.get('throughput_ref'), '.0f')}), time ours/ref {_num(r.get('time_ratio'), '.2f')}x, "
                f"step peak ours +{_num(r.get('peak_ours'), '.1f', gib)} GiB "
                f"ref +{_num(r.get('peak_ref'), '.1f', gib)} GiB"
            )
        elif name == "speculative":
            paths = r.get("paths") or {}
            rtfx = " ".join(
                f"{p[:4] if p != 'autoregressive' else 'AR'} {_num((paths.get(p) or {}).get('rtfx'), '.0f')}"
                for p in ("autoregressive", "ctc", "verified", "fallback")
            )
            proj = r.get("projection") or {}
            mixed = (r.get("mixed") or {}).get("rtfx")
            figures = (
                f"RTFx {rtfx}; at shares {proj.get('shares')}: projected {_num(proj.get('rtfx'), '.0f')}, "
                f"mixed batch {_num(mixed, '.0f')}; break-even fallback "
                f"{_num(proj.get('break_even_fallback_share'), '.0f', 100)}%"
            )
        elif name == "turboctc":
            figures = (
                f"5.0 {_num(r.get('step_s_5_0'), '.1f', 1e3)} ms/step vs 4.0 {_num(r.get('step_s_4_0'), '.1f', 1e3)}"
                f" ms/step ({_num(r.get('time_ratio_5_0_over_4_0'), '.2f')}x), "
                f"peak {_num(r.get('peak_memory_bytes'), '.1f', gib)} GiB"
            )
        else:
            figures = ""
        if part.get("status") != "ok":
            error = (part.get("error") or "").strip().splitlines() or ["no output"]
            figures = f"{figures}  [{error[0] if part.get('status') == 'timeout' else error[-1]}]".strip()
        lines.append(f"{name:12s} {part.get('status', '?'):8s} {_num(part.get('wall_s'), '7.1f')}  {figures}")
    return lines


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def _caps(text: str) -> dict[str, float]:
    caps = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in PARTS or not value:
            raise argparse.ArgumentTypeError(
                f"expected PART=SECONDS,... with parts {sorted(PARTS)}, got {text!r}"
            )
        caps[name.strip()] = float(value)
    return caps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"the JSON (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}"
    )
    parser.add_argument(
        "--caps",
        type=_caps,
        default={},
        help="time caps in s, e.g. stage2=240,encoder=60 (defaults: "
        + ", ".join(f"{k}={v:.0f}" for k, (_, _, v) in PARTS.items())
        + ")",
    )
    parser.add_argument("--budget", type=float, default=530.0, help="seconds for all parts together")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {sorted(PARTS)}")
    return args


def _write(report: dict, out: Path) -> None:
    out.write_text(json.dumps(_finite(report), indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        raise SystemExit(2)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **environment(),
        "budget_s": args.budget,
        "parts": {},
    }
    print(f"gpu_check: parts {', '.join(args.parts)}, budget {args.budget:.0f} s, JSON {out}")
    for name in args.parts:
        script, part_argv, cap = PARTS[name]
        left = args.budget - (time.perf_counter() - start)
        cap = min(args.caps.get(name, cap), left)
        if left < MIN_PART_S:
            report["parts"][name] = {"status": "skipped", "error": f"only {left:.0f} s of the budget left"}
            _write(report, out)
            continue
        part_json = out.with_name(f"{out.stem}.{name}.json")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", script, str(part_json), *part_argv]
        record = run_part(name, cmd, cap, out.with_name(f"{out.stem}.{name}.log"), part_json)
        part_json.unlink(missing_ok=True)  # its content is in the report
        report["parts"][name] = record
        _write(report, out)
    report.update(gpu_info())
    report["wall_s"] = time.perf_counter() - start
    _write(report, out)
    print("\n" + "=" * 100)
    for line in summary_lines(report):
        print(line)
    print(f"figures in {out}")
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        main()
