"""Transcribe audio files with vLLM's offline ``LLM`` API: the serving half of the vLLM check.

Runs in the *serving* virtual environment (``bash scripts/serve_setup.sh``), not the project's:
vLLM pins its own torch and transformers. It imports nothing from granite-train; the project side
(``benchmarks/vllm_serving.py``) writes the requests, runs transformers on the same folder and
compares. Usage::

    .venv-serve/bin/python scripts/vllm_transcribe.py --model DIR [--lora ADAPTER_DIR] \
        --requests requests.jsonl --out transcripts.jsonl

``requests.jsonl``: one ``{"id", "audio" (a 16 kHz mono PCM WAV path), "instruction"}`` per line.
``--out``: the same ids with ``text``, ``token_ids``, and a last line ``{"timing": {...}}`` (load
seconds, generate seconds, audio seconds). Greedy, one request per prompt, as transformers is run.
"""

from __future__ import annotations

import argparse
import json
import time
import wave
from pathlib import Path

import numpy as np

AUDIO_TOKEN = "<|audio|>"
SAMPLE_RATE = 16000


def read_wav(path: str) -> np.ndarray:
    """A 16-bit PCM mono 16 kHz WAV as float32 in [-1, 1) (soundfile's scaling: x / 32768)."""
    with wave.open(path, "rb") as f:
        if f.getframerate() != SAMPLE_RATE or f.getnchannels() != 1 or f.getsampwidth() != 2:
            raise SystemExit(
                f"{path}: need 16 kHz mono 16-bit PCM, got {f.getframerate()} Hz, "
                f"{f.getnchannels()} channel(s), {8 * f.getsampwidth()} bit"
            )
        data = f.readframes(f.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def chat_prompt(tokenizer, instruction: str) -> list[int]:
    """The prompt ids as granite-train's training and eval build them (and vLLM's transcription
    route): the chat template over ``<|audio|>{instruction}``, no special tokens added on top."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{AUDIO_TOKEN}{instruction}"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return tokenizer(text, add_special_tokens=False).input_ids


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="a GraniteSpeech folder (merged export or released base)"
    )
    parser.add_argument("--lora", help="a peft LoRA adapter folder to apply with LoRARequest")
    parser.add_argument("--requests", required=True, help="jsonl of {id, audio, instruction}")
    parser.add_argument("--out", required=True, help="jsonl to write")
    parser.add_argument("--dtype", default="float32", help="float32 (default: exact comparison) or bfloat16")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--max-model-len", type=int, help="default: the LLM's max_position_embeddings")
    parser.add_argument(
        "--kv-cache-gib",
        type=float,
        default=2.0,
        help="KV cache size (vLLM on CPU reserves 92%% of RAM by default and refuses to start "
        "when less is free)",
    )
    parser.add_argument("--batch", action="store_true", help="submit all requests at once (throughput)")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams, TokensPrompt

    requests = [json.loads(line) for line in Path(args.requests).read_text().splitlines() if line.strip()]
    lora_request, lora_kwargs = None, {}
    if args.lora:
        from vllm.lora.request import LoRARequest

        rank = int(json.loads((Path(args.lora) / "adapter_config.json").read_text())["r"])
        # vLLM's --max-lora-rank takes 1, 8, 16, 32, 64, ... (granite_train's vllm_max_lora_rank)
        max_rank = next(r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= rank)
        lora_kwargs = {"enable_lora": True, "max_lora_rank": max_rank, "max_loras": 1}
        lora_request = LoRARequest("adapter", 1, str(Path(args.lora).resolve()))

    start = time.perf_counter()
    llm = LLM(
        model=str(args.model),
        dtype=args.dtype,
        limit_mm_per_prompt={"audio": 1},
        enforce_eager=True,
        seed=0,
        kv_cache_memory_bytes=int(args.kv_cache_gib * 2**30),
        **lora_kwargs,
        **({"max_model_len": args.max_model_len} if args.max_model_len else {}),
    )
    load_s = time.perf_counter() - start
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    prompts, audio_s = [], 0.0
    for request in requests:
        wave_array = read_wav(request["audio"])
        audio_s += len(wave_array) / SAMPLE_RATE
        prompts.append(
            TokensPrompt(
                prompt_token_ids=chat_prompt(tokenizer, request["instruction"]),
                multi_modal_data={"audio": (wave_array, SAMPLE_RATE)},
            )
        )
    llm.generate(prompts[:1], params, lora_request=lora_request, use_tqdm=False)  # warm-up, untimed
    start = time.perf_counter()
    if args.batch:
        outputs = llm.generate(prompts, params, lora_request=lora_request, use_tqdm=False)
    else:
        outputs = [llm.generate([p], params, lora_request=lora_request, use_tqdm=False)[0] for p in prompts]
    generate_s = time.perf_counter() - start
    with open(args.out, "w") as f:
        for request, output in zip(requests, outputs):
            completion = output.outputs[0]
            row = {"id": request["id"], "text": completion.text, "token_ids": list(completion.token_ids)}
            f.write(json.dumps(row) + "\n")
        timing = {"load_s": load_s, "generate_s": generate_s, "audio_s": audio_s, "batch": args.batch}
        f.write(json.dumps({"timing": timing}) + "\n")
    print(json.dumps({"timing": timing}))


if __name__ == "__main__":  # vLLM spawns worker processes: the guard is required
    main()
