"""Serving proven: vLLM loads our export (or a base + our LoRA adapter) and transcribes like transformers.

    bash scripts/serve_setup.sh                       # once: vLLM (CPU) in its own venv, .venv-serve
    .venv/bin/python benchmarks/vllm_serving.py --model work/serve/smollm2_merged \
        --data work/corpus/tts_en_engines --split test --num 50 --out work/serve/check_merged
    .venv/bin/python benchmarks/vllm_serving.py --model BASE_DIR --lora ADAPTER_DIR \
        --data work/fsdd_sets/yweweler_100.csv --num 50 --out work/serve/check_lora
    .venv/bin/python benchmarks/vllm_serving.py ... --endpoint     # also `vllm serve` + a POST

What it does, each in its own process so neither stack's torch meets the other's:

1. writes the first ``--num`` utterances of ``--data`` (a parquet dataset folder with ``--split``,
   or a csv / jsonl manifest with ``audio`` and ``text``) as 16 kHz 16-bit WAV files, plus
   ``requests.jsonl`` and ``manifest.csv`` naming them;
2. **transformers** (this venv): the export card's own recipe, ``AutoProcessor`` +
   ``AutoModelForSpeechSeq2Seq`` (+ ``load_adapter`` for ``--lora``), one utterance at a time,
   greedy, ``--max-tokens`` new tokens;
3. **vLLM** (the serving venv): ``scripts/vllm_transcribe.py``, the offline ``LLM`` API, greedy,
   one request per ``generate`` call (the comparison) and, with ``--batch``, all at once;
4. compares token ids and text per utterance (``identical`` counts; every difference listed);
5. ``--eval``: ``granite-train eval`` on the same manifest: RTFx of our own batched decoding;
6. ``--endpoint``: ``vllm serve`` on localhost, ``POST /v1/audio/transcriptions`` of one WAV file
   (the OpenAI route), its transcript against vLLM's offline one, request latency, server startup.

Writes ``serving.json`` and ``serving.md`` under ``--out``. RTFx: audio seconds over decoding wall
time (model load excluded, the first request's warm-up excluded for vLLM). ``--dtype`` float32 by
default: bf16 on both sides differs by kernel rounding, not by anything in the export.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SERVE_VENV = REPO / ".venv-serve"
SERVE_SETUP = "bash scripts/serve_setup.sh"
VLLM_SCRIPT = REPO / "scripts" / "vllm_transcribe.py"
# vLLM's CPU attention backend (0.32: cpu_attn.py get_supported_head_sizes); others fail at start
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
INSTRUCTION = "can you transcribe the speech into a written format?"  # vLLM's transcription route's
SAMPLE_RATE = 16000


class ServingCheckError(RuntimeError):
    """A check that cannot run (the message names the fix)."""


# --------------------------------------------------------------------------------------------------
# set-up
# --------------------------------------------------------------------------------------------------
def serve_python(venv: str | Path | None = None) -> Path:
    """The serving venv's python: ``venv``, ``$GRANITE_SERVE_VENV`` or ``.venv-serve``."""
    root = Path(venv or os.environ.get("GRANITE_SERVE_VENV") or DEFAULT_SERVE_VENV)
    python = root / "bin" / "python"
    if not python.is_file():
        raise ServingCheckError(
            f"no serving venv at {root}: create it with `{SERVE_SETUP}` (vLLM CPU, ~3.5 GB)"
        )
    return python


def vllm_problems(model_dir: str | Path) -> list[str]:
    """What in ``model_dir`` vLLM (CPU) will refuse, found before paying for its ~60 s start."""
    from safetensors import safe_open

    folder = Path(model_dir)
    config = json.loads((folder / "config.json").read_text())
    text = config.get("text_config") or {}
    problems = []
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    if head_dim not in VLLM_CPU_HEAD_SIZES:
        problems.append(f"LLM head_dim {head_dim}: vLLM's CPU attention supports {list(VLLM_CPU_HEAD_SIZES)}")
    for file in sorted(folder.glob("model*.safetensors")):
        with safe_open(str(file), "pt") as f:
            new_names = [k for k in f.keys() if k.startswith("model.")]  # noqa: SIM118
        if new_names:
            problems.append(
                f"{file.name}: transformers-5 tensor names ({new_names[0]}, ...); vLLM loads the released "
                "names (encoder.*, projector.*, language_model.model.*): re-export with granite-train export"
            )
    return problems


# --------------------------------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------------------------------
def _rows(data: str, split: str, num: int) -> list[dict[str, Any]]:
    path = Path(data)
    if path.suffix in (".csv", ".jsonl"):
        with path.open() as f:
            rows = (
                list(csv.DictReader(f)) if path.suffix == ".csv" else [json.loads(x) for x in f if x.strip()]
            )
        missing = {"audio", "text"} - set(rows[0] if rows else {})
        if missing:
            raise ServingCheckError(f"{data}: needs columns audio and text, missing {sorted(missing)}")
        return [
            {"id": r.get("id") or Path(r["audio"]).stem, "audio": r["audio"], "text": r["text"]}
            for r in rows[:num]
        ]
    import pyarrow.parquet as pq

    from granite_train.data.sources import split_files

    rows: list[dict[str, Any]] = []
    for file in split_files(str(path), split):
        for row in pq.read_table(file, columns=["id", "audio", "text"]).to_pylist():
            rows.append({"id": row["id"], "audio": io.BytesIO(row["audio"]["bytes"]), "text": row["text"]})
            if len(rows) == num:
                return rows
    if not rows:
        raise ServingCheckError(f"{data}: no {split!r} parquet files")
    return rows


def write_requests(data: str, split: str, num: int, out_dir: Path) -> list[dict[str, Any]]:
    """The first ``num`` utterances as 16 kHz PCM-16 WAV files + ``requests.jsonl`` / ``manifest.csv``.

    Both sides then read the very same samples (int16 / 32768), whatever the source's format.
    """
    import soundfile as sf

    from granite_train.audio.io import load_audio

    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    requests = []
    for row in _rows(data, split, num):
        wav = (audio_dir / f"{row['id']}.wav").resolve()
        sf.write(str(wav), load_audio(row["audio"]).numpy(), SAMPLE_RATE, subtype="PCM_16")
        requests.append({"id": row["id"], "audio": str(wav), "text": row["text"], "instruction": INSTRUCTION})
    (out_dir / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    with (out_dir / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "audio", "text"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("id", "audio", "text")} for r in requests)
    return requests


def _audio_seconds(requests: list[dict[str, Any]]) -> float:
    import soundfile as sf

    return sum(sf.info(r["audio"]).duration for r in requests)


# --------------------------------------------------------------------------------------------------
# the two stacks
# --------------------------------------------------------------------------------------------------
def transformers_transcripts(
    model_dir: str | Path, requests: list[dict[str, Any]], lora: str | Path | None, max_tokens: int
) -> tuple[list[dict[str, Any]], float]:
    """Greedy transcripts by plain transformers, as the export card shows; returns rows, decode seconds."""
    import soundfile as sf
    import torch
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_dir))
    model = AutoModelForSpeechSeq2Seq.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    if lora is not None:
        model.load_adapter(str(lora))
    tokenizer = processor.tokenizer
    chat = [{"role": "user", "content": f"<|audio|>{INSTRUCTION}"}]
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    rows, seconds = [], 0.0
    for request in requests:
        wave, _ = sf.read(request["audio"], dtype="float32")
        inputs = processor(prompt, torch.from_numpy(wave), return_tensors="pt")
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **inputs,
                max_new_tokens=max_tokens,
                do_sample=False,
                num_beams=1,
                output_logits=True,
                return_dict_in_generate=True,
            )
        seconds += time.perf_counter() - start
        ids = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        # how far the chosen token led the runner-up at each step: a difference where this is
        # tiny is a near-tie that rounding can flip, not a serving bug
        margins = [float(t[0] - t[1]) for t in (s[0].float().topk(2).values for s in out.logits)]
        rows.append(
            {
                "id": request["id"],
                "token_ids": ids,
                "text": tokenizer.decode(ids, skip_special_tokens=True),
                "top2_margins": margins,
            }
        )
    return rows, seconds


def vllm_transcripts(
    python: Path,
    model_dir: str | Path,
    out_dir: Path,
    lora: str | Path | None,
    max_tokens: int,
    batch: bool = False,
    timeout: float = 900,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Run ``scripts/vllm_transcribe.py`` in the serving venv; returns its rows and timing."""
    out = out_dir / ("vllm_batch.jsonl" if batch else "vllm.jsonl")
    command = [str(python), str(VLLM_SCRIPT), "--model", str(model_dir), "--requests",
               str(out_dir / "requests.jsonl"), "--out", str(out), "--max-tokens", str(max_tokens)]  # fmt: skip
    if lora is not None:
        command += ["--lora", str(lora)]
    if batch:
        command.append("--batch")
    log = out_dir / ("vllm_batch.log" if batch else "vllm.log")
    with log.open("w") as f:
        try:
            result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as err:
            raise ServingCheckError(f"vLLM did not finish in {timeout:.0f} s: see {log}") from err
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise ServingCheckError(f"vLLM failed (exit {result.returncode}), see {log}:\n{tail}")
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    return [x for x in lines if "timing" not in x], lines[-1]["timing"]


def _strip_end(ids: list[int], end_ids: set[int]) -> list[int]:
    while ids and ids[-1] in end_ids:
        ids = ids[:-1]
    return ids


def compare(
    reference: list[dict[str, Any]], served: list[dict[str, Any]], end_ids: set[int]
) -> dict[str, Any]:
    """Per-utterance agreement: token ids (end-of-text tokens aside: vLLM keeps the stop token) and text.

    Each difference names its first differing position and, where the reference recorded it, how far
    transformers' chosen token led its runner-up there (logits): a near-tie or a real disagreement.
    """
    served_by_id = {r["id"]: r for r in served}
    differences, same_tokens, same_text = [], 0, 0
    for ref in reference:
        got = served_by_id.get(ref["id"])
        if got is None:
            differences.append({"id": ref["id"], "reason": "no vLLM output"})
            continue
        a, b = _strip_end(ref["token_ids"], end_ids), _strip_end(got["token_ids"], end_ids)
        same_tokens += a == b
        same_text += ref["text"].strip() == got["text"].strip()
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            difference = {
                "id": ref["id"],
                "first_different_token": first,
                "transformers": ref["text"],
                "vllm": got["text"],
            }
            margins = ref.get("top2_margins") or []
            if first < len(margins):
                difference["transformers_top2_logit_margin"] = round(margins[first], 6)
            differences.append(difference)
    return {"n": len(reference), "identical_tokens": same_tokens, "identical_text": same_text,
            "differences": differences}  # fmt: skip


def our_eval(model_dir: str | Path, out_dir: Path, max_tokens: int, batch_size: int) -> dict[str, Any]:
    """``granite-train eval`` on the same manifest: our batched greedy decoding, its RTFx and WER."""
    dataset = f"[{{name: serving_set, path: {out_dir / 'manifest.csv'}, language: en}}]"
    command = [str(REPO / ".venv" / "bin" / "granite-train"), "eval", f"model_path={model_dir}",
               f"output_dir={out_dir / 'eval'}", f"datasets={dataset}", f"max_new_tokens={max_tokens}",
               f"batch_size={batch_size}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServingCheckError(f"granite-train eval failed ({result.returncode}):\n{result.stderr[-2000:]}")
    result = json.loads((out_dir / "eval" / "results.json").read_text())["results"][0]
    return {"wer": result["wer"], "audio_s": result["audio_seconds"], "decode_s": result["wall_seconds"],
            "rtfx": result["audio_seconds"] / result["wall_seconds"], "batch_size": batch_size}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# the OpenAI-compatible endpoint
# --------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(fields: dict[str, str], file_field: str, file_path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{file_path.name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + file_path.read_bytes()
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def endpoint_round_trip(
    python: Path,
    model_dir: str | Path,
    wav: Path,
    out_dir: Path,
    max_tokens: int,
    startup_timeout: float = 600,
) -> dict[str, Any]:
    """``vllm serve`` on localhost, one ``POST /v1/audio/transcriptions``; the server is always stopped."""
    port = _free_port()
    served_name = "granite-speech"
    command = [str(python.parent / "vllm"), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--dtype",
               "float32", "--enforce-eager", "--served-model-name", served_name, "--seed", "0",
               "--kv-cache-memory-bytes", str(2 * 2**30)]  # fmt: skip
    log = out_dir / "vllm_serve.log"
    start = time.perf_counter()
    with log.open("w") as f:
        server = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            if server.poll() is not None:
                raise ServingCheckError(
                    f"vllm serve exited ({server.returncode}) before it was ready: see {log}"
                )
            if time.perf_counter() - start > startup_timeout:
                raise ServingCheckError(f"vllm serve not ready after {startup_timeout:.0f} s: see {log}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        startup_s = time.perf_counter() - start
        fields = {"model": served_name, "temperature": "0", "response_format": "json",
                  "max_completion_tokens": str(max_tokens)}  # fmt: skip
        body, content_type = _multipart(fields, "file", wav)
        request = urllib.request.Request(
            f"{base}/v1/audio/transcriptions",
            data=body,
            headers={"Content-Type": content_type},
            method="POST",
        )
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as err:
            raise ServingCheckError(
                f"POST /v1/audio/transcriptions: HTTP {err.code}: {err.read()[:500]!r}"
            ) from err
        latency_s = time.perf_counter() - t0
        return {"text": answer.get("text", ""), "latency_s": latency_s, "startup_s": startup_s, "port": port}
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its engine workers too), SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
def _table(report: dict[str, Any]) -> str:
    agree = report["agreement"]
    lines = [
        f"# vLLM serving check: {report['model']}" + (f" + LoRA {report['lora']}" if report["lora"] else ""),
        "",
        f"{agree['n']} utterances of {report['data']}, greedy, {report['max_tokens']} new tokens, float32.",
        "",
        "| | value |",
        "| --- | ---: |",
        f"| identical token ids (vLLM vs transformers) | {agree['identical_tokens']} / {agree['n']} |",
        f"| identical text | {agree['identical_text']} / {agree['n']} |",
        f"| vLLM load (s) | {report['vllm']['load_s']:.1f} |",
    ]
    audio = report["audio_s"]
    rows = [("transformers, one at a time", report["transformers_decode_s"])]
    rows.append(("vLLM offline, one request at a time", report["vllm"]["generate_s"]))
    if "vllm_batch" in report:
        rows.append(("vLLM offline, all requests at once", report["vllm_batch"]["generate_s"]))
    if "eval" in report:
        rows.append(
            (f"granite-train eval, batch_size {report['eval']['batch_size']}", report["eval"]["decode_s"])
        )
    lines += ["", "| decoding | seconds | utterances / s | RTFx |", "| --- | ---: | ---: | ---: |"]
    for name, seconds in rows:
        lines.append(f"| {name} | {seconds:.2f} | {agree['n'] / seconds:.2f} | {audio / seconds:.1f} |")
    if "endpoint" in report:
        e = report["endpoint"]
        lines += ["", f"Endpoint: `POST /v1/audio/transcriptions` -> {e['text']!r} in {e['latency_s']:.2f} s "
                  f"(server ready after {e['startup_s']:.0f} s); offline vLLM said {e['offline_text']!r}."]  # fmt: skip
    for d in agree["differences"]:
        lines.append(f"- differs: {d}")
    return "\n".join(lines) + "\n"


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    python = serve_python(args.serve_venv)
    problems = vllm_problems(args.model)
    if problems:
        raise ServingCheckError(f"{args.model} will not load in vLLM: " + "; ".join(problems))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    requests = write_requests(args.data, args.split, args.num, out)
    report: dict[str, Any] = {"model": str(args.model), "lora": args.lora and str(args.lora), "data": args.data,
                              "max_tokens": args.max_tokens, "audio_s": _audio_seconds(requests)}  # fmt: skip
    served, report["vllm"] = vllm_transcripts(python, args.model, out, args.lora, args.max_tokens)
    if args.batch:
        _, report["vllm_batch"] = vllm_transcripts(
            python, args.model, out, args.lora, args.max_tokens, batch=True
        )
    reference, report["transformers_decode_s"] = transformers_transcripts(
        args.model, requests, args.lora, args.max_tokens
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    end_ids = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    report["agreement"] = compare(reference, served, end_ids)
    report["transcripts"] = [
        {"id": r["id"], "reference": q["text"], "transformers": r["text"], "vllm": s["text"]}
        for q, r, s in zip(requests, reference, served)
    ]
    if args.eval:
        if args.lora:
            raise ServingCheckError(
                "--eval needs a merged folder (granite-train eval does not take an adapter)"
            )
        report["eval"] = our_eval(args.model, out, args.max_tokens, args.eval_batch_size)
    if args.endpoint:
        if args.lora:
            raise ServingCheckError("--endpoint serves a merged folder; give --model without --lora")
        report["endpoint"] = endpoint_round_trip(
            python, args.model, Path(requests[0]["audio"]), out, args.max_tokens
        )
        report["endpoint"]["offline_text"] = served[0]["text"]
    (out / "serving.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "serving.md").write_text(_table(report))
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="a GraniteSpeech folder (merged export, or the base for --lora)"
    )
    parser.add_argument("--lora", help="a LoRA adapter folder (finetune trains=lora: train/speech_llm_lora)")
    parser.add_argument(
        "--data", required=True, help="parquet dataset folder, or csv / jsonl with audio,text"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=20, help="utterances (the first N)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", required=True, help="folder for the WAV files, logs, serving.json / .md")
    parser.add_argument(
        "--serve-venv", help=f"the vLLM venv (default $GRANITE_SERVE_VENV or {DEFAULT_SERVE_VENV})"
    )
    parser.add_argument("--batch", action="store_true", help="also time vLLM with all requests at once")
    parser.add_argument("--eval", action="store_true", help="also time granite-train eval on the same set")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument(
        "--endpoint", action="store_true", help="also vllm serve + POST /v1/audio/transcriptions"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run_check(args)
    except ServingCheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(args.out) / "serving.md").read_text())
    agree = report["agreement"]
    return 0 if agree["identical_tokens"] == agree["n"] else 1


if __name__ == "__main__":
    sys.exit(main())
