"""Machine-translation backends: a local transformers model, an OpenAI-compatible chat endpoint, Apertium.

A backend turns a batch of sentences in one language into another::

    backend.translate(["Where is the station?", ...], "en", "de") -> ["Wo ist der Bahnhof?", ...]

Each slot of the returned list is either the translation (``str``) or the ``Exception`` that this
sentence failed with, so one bad sentence (a request that keeps failing, a context-length error)
costs one example, not the batch. ``describe()`` returns the settings that determine the outputs
(model, revision, prompt, decoding) -- never secrets, devices, server addresses or concurrency, so
a job can resume on another GPU or against a restarted server -- and goes into the dataset card
and into the resume fingerprint of every shard.

* :class:`TransformersBackend` -- a local model or hub id, loaded with ``AutoModelForSeq2SeqLM``
  (MADLAD-400 / T5 with a ``"<2de> "`` source prefix, NLLB / M2M / mBART with language codes and
  a forced BOS token, Marian opus-mt per pair) or ``AutoModelForCausalLM`` with the translation
  prompt rendered by the tokenizer's chat template (Phi-4, Granite, ...). Greedy decoding.
* :class:`OpenAIChatBackend` -- ``POST {base_url}/chat/completions`` on any OpenAI-compatible
  server (``vllm serve``, TGI, llama.cpp, a hosted API), temperature 0, concurrent requests,
  retries with exponential backoff on connection errors, timeouts, 408/409/429 and 5xx. Standard
  library only (``urllib``); the API key is read from an environment variable.
* :class:`ApertiumBackend` -- rule-based Apertium pairs (``apt-get install apertium-eng-spa``),
  direct or through a pivot language: offline and CPU-only.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from granite_train.text.languages import language_name

SUPPORTED_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("en", t) for t in ("fr", "de", "es", "pt", "ja", "it", "zh")}
    | {(s, "en") for s in ("fr", "de", "es", "pt", "ja")}
)
"""The speech-translation directions of granite-speech (RECIPE.md data mixture): en -> fr, de, es,
pt, ja, it, zh and fr, de, es, pt, ja -> en."""

DEFAULT_PROMPT = (
    "Translate the following {source_language} text into {target_language}. "
    "Reply with the translation only, without quotes, notes or explanations.\n\n{text}"
)
"""User message for chat backends. Placeholders: ``{text}``, ``{source_language}``,
``{target_language}`` (names, from ``granite_train.text.languages``), ``{src}``, ``{tgt}`` (codes);
write literal braces as ``{{ }}``."""


class TranslationError(RuntimeError):
    """A sentence the backend could not translate (after retries).

    ``transient`` marks failures of the service rather than of the sentence (connection refused,
    timeouts, 5xx / 429 after every retry): many of them mean the backend is down, and the
    generator stops instead of turning the corpus into rejects. A sentence-level failure (a 4xx
    such as a context-length error, an output cut at the token limit) only rejects that pair.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def check_pair(source: str, target: str) -> None:
    """Raise ``ValueError`` unless ``source -> target`` is a supported direction."""
    if (source, target) not in SUPPORTED_PAIRS:
        pairs = ", ".join(f"{s}->{t}" for s, t in sorted(SUPPORTED_PAIRS))
        raise ValueError(f"unsupported translation pair {source}->{target}; supported: {pairs}")


def format_prompt(template: str, text: str, source: str, target: str) -> str:
    """Fill a prompt template (see :data:`DEFAULT_PROMPT` for the placeholders)."""
    return template.format(
        text=text,
        src=source,
        tgt=target,
        source_language=language_name(source),
        target_language=language_name(target),
    )


def _check_template(template: str, *, needs_text: bool) -> None:
    try:
        probe = format_prompt(template, "\x00TEXT\x00", "en", "de")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"bad prompt template {template!r}: {e!r} (placeholders: {{text}}, {{source_language}}, "
            "{{target_language}}, {{src}}, {{tgt}}; literal braces as {{{{ }}}})"
        ) from e
    if needs_text and "\x00TEXT\x00" not in probe:
        raise ValueError(f"prompt template {template!r} has no {{text}} placeholder")


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_QUOTES = {'"': '"', "“": "”", "«": "»", "「": "」", "『": "』", "'": "'"}


def clean_output(text: str, source: str = "") -> str:
    """Model output -> one line: drop ``<think>...</think>`` blocks, NFC, collapse whitespace, and
    strip one pair of quotes wrapped around the whole output when the source was not quoted."""
    text = _THINK.sub(" ", text)
    text = " ".join(unicodedata.normalize("NFC", text).split())
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1] and source.lstrip()[:1] not in _QUOTES:
        text = text[1:-1].strip()
    return text


@runtime_checkable
class MTBackend(Protocol):
    """What the generator needs from a translation backend."""

    name: str

    def describe(self) -> dict[str, Any]: ...

    def translate(self, texts: Sequence[str], source: str, target: str) -> list[str | Exception]: ...


# ------------------------------------------------------------------------------- transformers


class TransformersBackend:
    """A local transformers translation model (seq2seq or causal LM), greedy decoding.

    Args:
        model: local folder or hub id.
        model_type: ``"seq2seq"`` (``AutoModelForSeq2SeqLM``), ``"causal"``
            (``AutoModelForCausalLM`` + chat template) or ``"auto"`` (``config.is_encoder_decoder``).
        source_prefix: seq2seq only: a template put before every source sentence, e.g.
            ``"<2{tgt}> "`` (MADLAD-400), ``">>{tgt}<< "`` (multilingual Marian) or
            ``"translate {source_language} to {target_language}: "`` (T5). Same placeholders as
            the prompt, without ``{text}``.
        lang_codes: seq2seq only: language -> model code (NLLB: ``{"en": "eng_Latn", "de":
            "deu_Latn"}``, mBART: ``en_XX``); sets ``tokenizer.src_lang`` (when the tokenizer
            has it) and forces the target code as the first generated token.
        prompt_template / system_prompt: causal only: the user message (see
            :data:`DEFAULT_PROMPT`) and an optional system message, rendered with the tokenizer's
            chat template (``add_generation_prompt=True``).
        batch_size: sentences per ``generate`` call (sorted by length to limit padding).
        max_new_tokens: generation limit per sentence.
        device: torch device (``cpu``, ``cuda``, ``cuda:1``).
        dtype: ``"auto"`` (the checkpoint's), ``"float32"``, ``"bfloat16"``, ``"float16"``.
        trust_remote_code: run the repository's own modelling code (off unless asked).
        revision: hub revision to pin.
        name: short name for cards and columns (default: the model's folder or id).
    """

    kind = "transformers"

    def __init__(
        self,
        model: str,
        *,
        model_type: str = "auto",
        source_prefix: str = "",
        lang_codes: Mapping[str, str] | None = None,
        prompt_template: str = DEFAULT_PROMPT,
        system_prompt: str | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 256,
        device: str = "cpu",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        revision: str | None = None,
        name: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        if model_type not in ("auto", "seq2seq", "causal"):
            raise ValueError(f"model_type must be auto, seq2seq or causal, got {model_type!r}")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        _check_template(source_prefix, needs_text=False)
        _check_template(prompt_template, needs_text=True)
        self.model_id = str(model)
        self.name = name or os.path.basename(self.model_id.rstrip("/")) or self.model_id
        self.source_prefix = source_prefix
        self.lang_codes = dict(lang_codes or {})
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.device = torch.device(device)
        self.dtype = dtype
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        common = {"revision": revision, "trust_remote_code": trust_remote_code}

        config = AutoConfig.from_pretrained(self.model_id, **common)
        if model_type == "auto":
            model_type = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        self.model_type = model_type
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_id, **common)
        if model_type == "causal":
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(
                    f"{self.model_id}: tokenizer has no chat template; a causal LM backend renders its "
                    "prompt with it (use an instruction-tuned model, or add chat_template to the folder)"
                )
            self.tokenizer.padding_side = "left"  # generation continues the right end of every row
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(f"{self.model_id}: tokenizer has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        cls = AutoModelForSeq2SeqLM if model_type == "seq2seq" else AutoModelForCausalLM
        self.model = cls.from_pretrained(self.model_id, config=config, dtype=torch_dtype, **common)
        self.model.to(self.device).eval()
        self._commit = getattr(config, "_commit_hash", None)
        self._lock = threading.Lock()  # one generate() at a time per model

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "model": self.model_id,
            "model_type": self.model_type,
            "model_class": type(self.model).__name__,
            "revision": self.revision or self._commit,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "decoding": "greedy",
            "max_new_tokens": self.max_new_tokens,
        }
        if self.model_type == "seq2seq":
            info.update(source_prefix=self.source_prefix, lang_codes=self.lang_codes)
        else:
            info.update(prompt_template=self.prompt_template, system_prompt=self.system_prompt)
        import transformers

        info["transformers"] = transformers.__version__
        return info

    def model_inputs(self, texts: Sequence[str], source: str, target: str) -> list[str]:
        """The strings given to the tokenizer: prefixed sentences or rendered chat prompts."""
        if self.model_type == "seq2seq":
            prefix = format_prompt(self.source_prefix, "", source, target) if self.source_prefix else ""
            return [prefix + t for t in texts]
        out = []
        for t in texts:
            messages = [{"role": "user", "content": format_prompt(self.prompt_template, t, source, target)}]
            if self.system_prompt:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            out.append(
                self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            )
        return out

    def _generate_kwargs(self, source: str, target: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": False,
            "num_beams": 1,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if self.model_type == "seq2seq" and self.lang_codes:
            missing = [lang for lang in (source, target) if lang not in self.lang_codes]
            if missing:
                raise ValueError(f"{self.name}: no language code for {missing} in lang_codes")
            if hasattr(self.tokenizer, "src_lang"):
                self.tokenizer.src_lang = self.lang_codes[source]
            code = self.lang_codes[target]
            token_id = self.tokenizer.convert_tokens_to_ids(code)
            if token_id is None or token_id == self.tokenizer.unk_token_id:
                raise ValueError(f"{self.name}: language code {code!r} is not a token of the tokenizer")
            kwargs["forced_bos_token_id"] = token_id
        return kwargs

    def translate(self, texts: Sequence[str], source: str, target: str) -> list[str | Exception]:
        import torch

        check_pair(source, target)
        inputs = self.model_inputs(texts, source, target)
        results: list[str | Exception] = [TranslationError("not translated")] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: (len(inputs[i]), i))  # less padding per batch
        with self._lock:
            kwargs = self._generate_kwargs(source, target)
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                try:
                    enc = self.tokenizer(
                        [inputs[i] for i in idx],
                        return_tensors="pt",
                        padding=True,
                        add_special_tokens=self.model_type == "seq2seq",  # chat templates carry theirs
                    ).to(self.device)
                    with torch.inference_mode():
                        out = self.model.generate(**enc, **kwargs)  # (B, T_in + T_new) or (B, T_new)
                    if self.model_type == "causal":
                        out = out[:, enc["input_ids"].shape[1] :]  # the generated continuation only
                    decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True)
                except Exception as e:  # noqa: BLE001 - e.g. OOM on one batch: its sentences fail
                    for i in idx:
                        results[i] = e
                    continue
                for i, text in zip(idx, decoded):
                    results[i] = clean_output(text, texts[i])
        return results


# ------------------------------------------------------------------------------ OpenAI chat API


class OpenAIChatBackend:
    """An OpenAI-compatible chat-completions endpoint (``vllm serve MODEL`` and the like).

    Args:
        base_url: API root, e.g. ``http://localhost:8000/v1``; requests go to
            ``{base_url}/chat/completions``.
        model: the served model name.
        api_key_env: environment variable holding the API key (sent as a Bearer token; no header
            when the variable is unset, as ``vllm serve`` without ``--api-key`` expects).
        prompt_template / system_prompt: user message (see :data:`DEFAULT_PROMPT`) and optional
            system message.
        temperature: 0 (greedy) by default.
        max_tokens: completion limit; a completion cut at it (``finish_reason == "length"``)
            counts as a failed sentence.
        concurrency: requests in flight at once.
        max_retries: retries per sentence after the first attempt, on connection errors,
            timeouts, HTTP 408/409/429 and 5xx, and malformed responses; other 4xx fail at once.
        backoff: first retry delay in seconds, doubled per retry (with jitter), capped by
            ``backoff_max``; a ``Retry-After`` header is honoured up to the cap.
        timeout: seconds per request.
        extra_body: more JSON fields for every request (``{"seed": 0}``, ``{"top_k": 1}``).
        name: short name for cards and columns (default: the model name).
    """

    kind = "openai-chat"
    RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        prompt_template: str = DEFAULT_PROMPT,
        system_prompt: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 512,
        concurrency: int = 8,
        max_retries: int = 4,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        timeout: float = 60.0,
        extra_body: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0 and timeout > 0")
        _check_template(prompt_template, needs_text=True)
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.name = name or model
        self.api_key_env = api_key_env
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.extra_body = dict(extra_body or {})
        self._pool: ThreadPoolExecutor | None = None
        self.stats = {"requests": 0, "retries": 0, "failures": 0}
        self._stats_lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "model": self.model,
            "prompt_template": self.prompt_template,
            "system_prompt": self.system_prompt,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "extra_body": self.extra_body,
        }

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _request(self, text: str, source: str, target: str) -> str:
        messages = [{"role": "user", "content": format_prompt(self.prompt_template, text, source, target)}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        body = {
            **self.extra_body,
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count("retries")
                delay = min(self.backoff_max, self.backoff * 2 ** (attempt - 1))
                retry_after = getattr(last, "retry_after", None)
                if retry_after is not None:
                    delay = min(self.backoff_max, max(delay, retry_after))
                time.sleep(delay * random.uniform(0.75, 1.0))
            self._count("requests")
            try:
                req = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                retryable = e.code in self.RETRY_STATUS
                err = TranslationError(f"HTTP {e.code} from {self.url}: {detail}", transient=retryable)
                if not retryable:
                    raise err from e
                try:
                    err.retry_after = float(e.headers.get("Retry-After"))  # type: ignore[attr-defined]
                except (TypeError, ValueError):
                    pass
                last = err
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = TranslationError(f"{type(e).__name__} talking to {self.url}: {e}", transient=True)
                continue
            except ValueError as e:  # invalid JSON
                last = TranslationError(f"malformed response from {self.url}: {e}", transient=True)
                continue
            try:
                choice = payload["choices"][0]
                content = choice["message"]["content"]
            except (KeyError, IndexError, TypeError):
                last = TranslationError(
                    f"unexpected response from {self.url}: {str(payload)[:300]}", transient=True
                )
                continue
            if choice.get("finish_reason") == "length":
                raise TranslationError(f"output cut at max_tokens={self.max_tokens}")
            return clean_output(content or "", text)
        raise last if last is not None else TranslationError("no attempt made", transient=True)

    def _one(self, text: str, source: str, target: str) -> str | Exception:
        try:
            return self._request(text, source, target)
        except Exception as e:  # noqa: BLE001 - reported per sentence
            self._count("failures")
            return e

    def translate(self, texts: Sequence[str], source: str, target: str) -> list[str | Exception]:
        check_pair(source, target)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"mt-{self.name}")
        return list(self._pool.map(lambda t: self._one(t, source, target), texts))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


# ----------------------------------------------------------------------------------- Apertium

# Apertium names its modes with two- or three-letter codes, depending on the package's age
_ISO639_3 = {
    "en": "eng", "es": "spa", "fr": "fra", "de": "deu", "pt": "por", "it": "ita", "ca": "cat",
    "gl": "glg", "eo": "epo", "ro": "ron", "oc": "oci", "eu": "eus", "ja": "jpn", "zh": "zho",
}  # fmt: skip


def apertium_modes(executable: str = "apertium", data_dir: str | None = None) -> frozenset[str]:
    """The translation modes an Apertium installation offers (``apertium -l``); empty if none."""
    import shutil
    import subprocess

    if shutil.which(executable) is None:
        return frozenset()
    cmd = [executable, *(["-d", data_dir] if data_dir else []), "-l"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(line.strip() for line in out.splitlines() if line.strip())


class ApertiumBackend:
    """Rule-based translation with `Apertium <https://apertium.org>`_: offline, CPU-only, deterministic.

    A second opinion for the agreement filter where no GPU or model download is at hand
    (``apt-get install apertium apertium-eng-spa``). A *route* chains Apertium modes: the default
    ``"{src}-{tgt}"`` is the direct pair; ``"{src}-ca,ca-{tgt}"`` pivots through Catalan, whose
    dictionaries and transfer rules differ from the direct pair's, so the two routes make a fairer
    pair of opinions than one system asked twice. Unknown words pass through unmarked.

    Args:
        route: comma-separated modes with ``{src}`` / ``{tgt}`` placeholders; a mode missing under
            its two-letter name is looked up under the three-letter one (``en-es`` -> ``eng-spa``).
        data_dir: a folder of Apertium modes (``apertium -d``); default: the installed pairs.
        executable: the ``apertium`` program.
        timeout: seconds per batch and mode.
        name: short name for cards and columns (default: ``apertium:<route>``).
    """

    kind = "apertium"

    def __init__(
        self,
        route: str = "{src}-{tgt}",
        *,
        data_dir: str | None = None,
        executable: str = "apertium",
        timeout: float = 300.0,
        name: str | None = None,
    ) -> None:
        self.route = [m.strip() for m in route.split(",") if m.strip()]
        if not self.route:
            raise ValueError("empty Apertium route")
        for mode in self.route:
            _check_template(mode, needs_text=False)
        self.data_dir = data_dir
        self.executable = executable
        self.timeout = timeout
        self.name = name or f"apertium:{','.join(self.route)}"
        self._command = [executable, *(["-d", data_dir] if data_dir else [])]
        self.modes = apertium_modes(executable, data_dir)
        if not self.modes:
            raise ValueError(
                f"no Apertium installation found ({executable!r} missing or without language pairs); "
                "install one, e.g. `apt-get install apertium apertium-eng-spa`"
            )
        self.version = self._version()  # asked once: describe() runs for the card and every shard

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "route": ",".join(self.route), "version": self.version}

    def _version(self) -> str | None:
        import subprocess

        try:  # the package versions of the pairs are what fixes the output; the engine's is a proxy
            out = subprocess.run([self.executable, "-h"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        match = re.search(r"Apertium\s+([0-9][\w.]*)", out.stdout + out.stderr)
        return match.group(1) if match else None

    def resolve(self, source: str, target: str) -> list[str]:
        """The installed modes of the route for ``source -> target`` (``ValueError`` if one is missing)."""
        modes = []
        for template in self.route:
            mode = format_prompt(template, "", source, target)
            if mode not in self.modes:
                a, _, b = mode.partition("-")
                long = f"{_ISO639_3.get(a, a)}-{_ISO639_3.get(b, b)}"
                if long not in self.modes:
                    raise ValueError(
                        f"Apertium mode {mode!r} is not installed (installed: {', '.join(sorted(self.modes))}); "
                        f"install its pair, e.g. `apt-get install apertium-{long}`"
                    )
                mode = long
            modes.append(mode)
        return modes

    def _run(self, mode: str, lines: list[str]) -> list[str]:
        import subprocess

        # -u: no '*' marks on unknown words. One sentence per line; Apertium keeps line breaks.
        cmd = [*self._command, "-u", mode]
        try:
            proc = subprocess.run(
                cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=self.timeout
            )
        except subprocess.TimeoutExpired as e:
            raise TranslationError(f"apertium {mode} took over {self.timeout:.0f} s") from e
        if proc.returncode != 0:
            raise TranslationError(f"apertium {mode} exited with {proc.returncode}: {proc.stderr[:300]}")
        out = proc.stdout.split("\n")
        if out and out[-1] == "":
            out.pop()
        if len(out) != len(lines):
            raise TranslationError(f"apertium {mode} returned {len(out)} lines for {len(lines)} sentences")
        return out

    def _translate_lines(self, modes: list[str], lines: list[str]) -> list[str]:
        for mode in modes:
            lines = self._run(mode, lines)
        return lines

    def translate(self, texts: Sequence[str], source: str, target: str) -> list[str | Exception]:
        check_pair(source, target)
        modes = self.resolve(source, target)
        lines = [" ".join(t.split()) for t in texts]  # a newline inside a sentence would split it
        try:
            outs: list[str | Exception] = list(self._translate_lines(modes, lines))
        except (TranslationError, OSError, ValueError) as batch_error:
            if len(lines) == 1:
                return [batch_error]
            outs = []  # a batch that lost its line alignment: sentence by sentence
            for line in lines:
                try:
                    outs.append(self._translate_lines(modes, [line])[0])
                except (TranslationError, OSError, ValueError) as e:
                    outs.append(e)
        return [o if isinstance(o, Exception) else clean_output(o, t) for o, t in zip(outs, texts)]
