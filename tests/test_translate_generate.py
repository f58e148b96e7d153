"""Speech-translation targets: agreement filter, MT backends (tiny local transformers models and a
real local HTTP server speaking the OpenAI chat API), the generator end to end, resume, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from data_prep.shards import STATE_DIR
from data_prep.translate import (
    SUPPORTED_PAIRS,
    AgreementConfig,
    BackendFailureError,
    OpenAIChatBackend,
    TransformersBackend,
    TranslationError,
    agreement,
    check_pair,
    generate_translations,
)
from data_prep.translate.__main__ import main as cli_main
from data_prep.translate.__main__ import run_cli
from data_prep.translate.agreement import is_empty
from data_prep.translate.backends import apertium_modes, clean_output
from data_prep.translate.generate import TRANSCRIPTION_TEMPLATE, features
from granite_train.data.sources import SourceSpec
from tests.corpus import audio_bytes, make_corpus, speechlike, write_parquet

# ---------------------------------------------------------------------------- agreement filter


def test_wer_threshold_keeps_at_and_rejects_above() -> None:
    ref = "eins zwei drei vier fünf sechs sieben acht neun zehn"  # 10 words
    three = "eins zwei drei vier fünf sechs sieben X Y Z"
    four = "eins zwei drei vier fünf sechs W X Y Z"
    a = agreement(ref, three, "de")
    assert (a.metric, a.score, a.threshold, a.agree) == ("wer", 0.3, 0.3, True)
    b = agreement(ref, four, "de")
    assert (b.metric, b.score, b.agree) == ("wer", 0.4, False)
    assert agreement(ref, four, "de", AgreementConfig(max_wer=0.4)).agree


def test_agreement_normalises_case_and_punctuation() -> None:
    a = agreement("Wo ist der Bahnhof?", "wo ist der bahnhof", "de")
    assert a.score == 0.0 and a.agree
    # the primary is the reference: one deletion over 4 words vs one insertion over 3
    assert agreement("wo ist der bahnhof", "wo ist bahnhof", "de").score == 0.25
    assert agreement("wo ist bahnhof", "wo ist der bahnhof", "de").score == pytest.approx(1 / 3)


@pytest.mark.parametrize("lang", ["ja", "zh"])
def test_cer_for_languages_without_spaces(lang: str) -> None:
    ref = "こんにちは" if lang == "ja" else "你好世界啊"  # 5 characters
    two = ref[:3] + "XY"
    three = ref[:2] + "XYZ"
    a = agreement(ref, two, lang)
    assert (a.metric, a.score, a.threshold, a.agree) == ("cer", 0.4, 0.4, True)
    b = agreement(ref, three, lang)
    assert (b.metric, b.score, b.agree) == ("cer", pytest.approx(0.6), False)
    # spaces cost nothing in CER languages; a WER on them would be 1.0
    assert agreement(ref, " ".join(ref), lang).score == 0.0
    assert agreement("东京 大学", "东京大学", "zh").agree


def test_cer_languages_and_thresholds_are_configurable() -> None:
    cfg = AgreementConfig(max_wer=0.1, max_cer=0.1, cer_languages=frozenset({"ja"}))
    assert agreement("你好世界啊", "你好世界吗", "zh", cfg).metric == "wer"  # zh now scored by WER
    assert agreement("こんにちは", "こんにちわ", "ja").score == 0.2
    assert not agreement("こんにちは", "こんにちわ", "ja", cfg).agree
    assert agreement("こんにちは", "こんにちわ", "ja", AgreementConfig(max_cer=0.2)).agree
    with pytest.raises(ValueError):
        AgreementConfig(max_wer=-1)
    with pytest.raises(ValueError):
        AgreementConfig(normalizer="nope")


@pytest.mark.parametrize(
    ("primary", "secondary", "lang"),
    [
        ("Wo ist der Bahnhof?", "Wo ist der Hauptbahnhof?", "de"),
        ("Le chat, assis.", "le chien assis sur", "fr"),
        ("こんにちは", "こんにち わ", "ja"),
        ("你好世界啊", "你好", "zh"),
        ("eins zwei drei", "", "de"),
    ],
)
def test_agreement_equals_the_eval_metrics(primary: str, secondary: str, lang: str) -> None:
    from granite_train.eval.metrics import error_rates

    a = agreement(primary, secondary, lang)
    assert a.score == pytest.approx(error_rates([primary], [secondary], "basic", lang)[a.metric])


def test_empty_outputs() -> None:
    assert is_empty("") and is_empty("  ...  ") and is_empty(None)
    assert not is_empty("ja")
    assert agreement("...", "etwas", "de").score == float("inf")
    assert agreement("...", "!", "de").score == 0.0


def test_supported_pairs() -> None:
    for tgt in ("fr", "de", "es", "pt", "ja", "it", "zh"):
        check_pair("en", tgt)
    for src in ("fr", "de", "es", "pt", "ja"):
        check_pair(src, "en")
    assert len(SUPPORTED_PAIRS) == 12
    for bad in [("en", "en"), ("de", "fr"), ("it", "en"), ("zh", "en"), ("en", "ko")]:
        with pytest.raises(ValueError, match=f"unsupported translation pair {bad[0]}->{bad[1]}"):
            check_pair(*bad)


def test_clean_output() -> None:
    assert clean_output("<think>hmm\nlet me see</think>\n Hallo   Welt \n") == "Hallo Welt"
    assert clean_output('"Hallo Welt"', "hello world") == "Hallo Welt"
    assert clean_output("「こんにちは」", "hello") == "こんにちは"
    assert clean_output('"Hallo" sagte er', "hello") == '"Hallo" sagte er'
    assert clean_output('"Hallo"', '"hello"') == '"Hallo"'  # the source was quoted: keep


# --------------------------------------------------------------------- fake OpenAI-style server

WORDS = {
    "de": {
        "alpha": "eins",
        "bravo": "zwei",
        "charlie": "drei",
        "delta": "vier",
        "echo": "fünf",
        "foxtrot": "sechs",
        "golf": "sieben",
        "hotel": "acht",
    },
    "ja": {
        "alpha": "アルファ",
        "bravo": "ブラボー",
        "charlie": "チャーリー",
        "delta": "デルタ",
        "echo": "エコー",
        "foxtrot": "フォックス",
        "golf": "ゴルフ",
        "hotel": "ホテル",
    },
}
TEST_PROMPT = "{tgt}|{text}"


def fake_translate(model: str, target: str, text: str) -> str:
    """mt-a: word-by-word dictionary; mt-b: the same except sentences with "golf" (disagreement)."""
    if model == "mt-a" and "EMPTYME" in text:
        return " ... "
    if model == "mt-a" and "COPYME" in text:
        return text
    sep = "" if target == "ja" else " "
    if model == "mt-b" and "golf" in text.split():
        return sep.join(["ganz", "anders", "übersetzt"] if target != "ja" else ["まったく", "ちがう"])
    words = [WORDS[target].get(w, w.lower()) for w in text.split()]
    out = sep.join(words)
    return out[:1].upper() + out[1:] + ("." if target != "ja" else "。")


class FakeServer:
    """A real HTTP server on 127.0.0.1 with /v1/chat/completions; behaviour by model name."""

    def __init__(self) -> None:
        self.requests: Counter = Counter()  # model -> requests
        self.per_text: Counter = Counter()  # (model, text) -> requests
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, code: int, body: dict | str, headers: dict | None = None) -> None:
                data = (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                model = body["model"]
                prompt = body["messages"][-1]["content"]
                target, _, text = prompt.partition("|")
                with server.lock:
                    server.requests[model] += 1
                    server.per_text[(model, text)] += 1
                    n = server.per_text[(model, text)]
                    server.auth.append(self.headers.get("Authorization"))
                finish = "stop"
                if model == "broken" or "FAILME" in text and model == "mt-b":
                    return self._send(500, {"error": "internal error"})
                if model == "bad-request":
                    return self._send(400, {"error": "context too long"})
                if model == "flaky" and n <= 2:
                    return self._send(503, {"error": "busy"}, {"Retry-After": "0"})
                if model == "garbage" and n <= 1:
                    return self._send(200, "not json at all")
                if model == "slow" and n <= 1:
                    threading.Event().wait(0.6)
                if model == "truncating":
                    finish = "length"
                if body.get("temperature") != 0.0:
                    return self._send(400, {"error": "tests expect temperature 0"})
                name = {"flaky": "mt-a", "garbage": "mt-a", "slow": "mt-a", "truncating": "mt-a"}.get(
                    model, model
                )
                content = fake_translate(name, target, text)
                return self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": finish,
                            }
                        ],
                    },
                )

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 drops concurrent SYNs: 1 s client stalls
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def backend(self, model: str, **kw) -> OpenAIChatBackend:
        kw = {"prompt_template": TEST_PROMPT, "backoff": 0.01, "timeout": 5.0, **kw}
        return OpenAIChatBackend(self.url, model, **kw)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


# ------------------------------------------------------------------------------ OpenAI backend


def test_openai_backend_translates_in_order_with_concurrency(server: FakeServer) -> None:
    b = server.backend("mt-a", concurrency=4)
    texts = [f"alpha {w}" for w in WORDS["de"]] * 2
    out = b.translate(texts, "en", "de")
    assert out == [fake_translate("mt-a", "de", t) for t in texts]
    assert out[1] == "Eins zwei."
    assert b.translate(["alpha hotel"], "en", "ja") == ["アルファホテル。"]
    assert server.requests["mt-a"] == len(texts) + 1
    b.close()


def test_openai_backend_api_key_from_env(server: FakeServer, monkeypatch) -> None:
    monkeypatch.setenv("GT_TEST_KEY", "sekret")
    b = server.backend("mt-a", api_key_env="GT_TEST_KEY")
    b.translate(["alpha"], "en", "de")
    assert server.auth[-1] == "Bearer sekret"
    assert "sekret" not in json.dumps(b.describe())
    monkeypatch.delenv("GT_TEST_KEY")
    b.translate(["bravo"], "en", "de")
    assert server.auth[-1] is None  # no key: no header (vllm serve without --api-key)


def test_openai_backend_retries_then_succeeds(server: FakeServer) -> None:
    b = server.backend("flaky", max_retries=3)
    assert b.translate(["alpha bravo", "charlie"], "en", "de") == ["Eins zwei.", "Drei."]
    assert server.requests["flaky"] == 6  # 2 x 503, then 200, per sentence
    assert b.stats == {"requests": 6, "retries": 4, "failures": 0}
    g = server.backend("garbage", max_retries=1)  # malformed JSON is retried too
    assert g.translate(["alpha"], "en", "de") == ["Eins."]


def test_openai_backend_timeout_is_retried(server: FakeServer) -> None:
    b = server.backend("slow", timeout=0.2, max_retries=2)
    assert b.translate(["alpha"], "en", "de") == ["Eins."]
    assert b.stats["retries"] >= 1


def test_openai_backend_failures_are_per_sentence(server: FakeServer) -> None:
    b = server.backend("broken", max_retries=2)
    out = b.translate(["alpha", "bravo"], "en", "de")
    assert all(isinstance(o, TranslationError) and "HTTP 500" in str(o) and o.transient for o in out)
    assert server.requests["broken"] == 6  # 1 + 2 retries each
    bad = server.backend("bad-request", max_retries=3)
    (err,) = bad.translate(["alpha"], "en", "de")
    assert isinstance(err, TranslationError) and "HTTP 400" in str(err) and not err.transient
    assert server.requests["bad-request"] == 1  # a 4xx is not retried
    (cut,) = server.backend("truncating").translate(["alpha"], "en", "de")
    assert isinstance(cut, TranslationError) and "max_tokens" in str(cut)
    mixed = server.backend("mt-b", max_retries=0).translate(["alpha", "FAILME"], "en", "de")
    assert mixed[0] == "Eins." and isinstance(mixed[1], TranslationError)


def test_openai_backend_unreachable_and_bad_template() -> None:
    b = OpenAIChatBackend("http://127.0.0.1:9/v1", "m", max_retries=1, backoff=0.01, timeout=1.0)
    (err,) = b.translate(["alpha"], "en", "de")
    assert isinstance(err, TranslationError)
    with pytest.raises(ValueError, match="text"):
        OpenAIChatBackend("http://x/v1", "m", prompt_template="Translate to {target_language}")
    with pytest.raises(ValueError, match="bad prompt template"):
        OpenAIChatBackend("http://x/v1", "m", prompt_template="{text} {oops}")
    with pytest.raises(ValueError, match="unsupported"):
        b.translate(["x"], "de", "fr")


# ------------------------------------------------------------------------ transformers backend

SENTENCES = [
    "the cat sat on the mat",
    "where is the station",
    "alpha bravo charlie delta echo",
    "die katze sitzt auf der matte",
    "wo ist der bahnhof",
    "eins zwei drei vier",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|> {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def _tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    specials = ["<pad>", "</s>", "<unk>", "<s>", "eng_Latn", "deu_Latn", "<2de>", "<|user|>", "<|assistant|>"]
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny random MarianMT (seq2seq) and GraniteForCausalLM (chat template) saved to disk."""
    import torch
    from transformers import GraniteConfig, GraniteForCausalLM, MarianConfig, MarianMTModel

    root = tmp_path_factory.mktemp("tiny_mt")
    torch.manual_seed(0)
    tok = _tokenizer()
    marian = MarianMTModel(
        MarianConfig(
            vocab_size=len(tok),
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            max_position_embeddings=64,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
            init_std=0.5,
        )
    )
    marian.save_pretrained(root / "marian")
    tok.save_pretrained(root / "marian")
    chat_tok = _tokenizer(CHAT_TEMPLATE)
    granite = GraniteForCausalLM(
        GraniteConfig(
            vocab_size=len(chat_tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=256,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=3,
            initializer_range=0.5,
        )
    )
    granite.save_pretrained(root / "granite")
    chat_tok.save_pretrained(root / "granite")
    granite.save_pretrained(root / "granite_nochat")
    tok.save_pretrained(root / "granite_nochat")
    return {"marian": root / "marian", "granite": root / "granite", "granite_nochat": root / "granite_nochat"}


def test_transformers_seq2seq_backend(tiny_models) -> None:
    b = TransformersBackend(str(tiny_models["marian"]), max_new_tokens=8, batch_size=4)
    assert b.model_type == "seq2seq" and b.name == "marian"
    out = b.translate(SENTENCES, "en", "de")
    assert len(out) == len(SENTENCES) and all(isinstance(o, str) for o in out)
    assert len(set(out)) > 1  # the (random) model reads its input
    assert b.translate(SENTENCES, "en", "de") == out  # greedy: deterministic
    b.batch_size = 1
    assert b.translate(SENTENCES, "en", "de") == out  # padding does not change the result
    info = b.describe()
    assert info["model_class"] == "MarianMTModel" and info["decoding"] == "greedy"
    assert info["max_new_tokens"] == 8 and "device" not in info


def test_transformers_seq2seq_prefix_and_language_codes(tiny_models) -> None:
    madlad = TransformersBackend(str(tiny_models["marian"]), source_prefix="<2{tgt}> ", max_new_tokens=4)
    assert madlad.model_inputs(["wo ist der bahnhof"], "en", "de") == ["<2de> wo ist der bahnhof"]
    assert len(madlad.translate(["wo ist der bahnhof"], "en", "de")) == 1

    nllb = TransformersBackend(
        str(tiny_models["marian"]), lang_codes={"en": "eng_Latn", "de": "deu_Latn"}, max_new_tokens=4
    )
    seen = {}
    generate = nllb.model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return generate(**kwargs)

    nllb.model.generate = spy
    nllb.translate(["the cat sat on the mat"], "en", "de")
    assert seen["forced_bos_token_id"] == nllb.tokenizer.convert_tokens_to_ids("deu_Latn")
    assert seen["do_sample"] is False and seen["num_beams"] == 1 and seen["max_new_tokens"] == 4
    with pytest.raises(ValueError, match="no language code"):
        nllb.translate(["where is the station"], "en", "ja")


def test_transformers_causal_backend_uses_chat_template(tiny_models) -> None:
    b = TransformersBackend(
        str(tiny_models["granite"]), max_new_tokens=5, batch_size=3, prompt_template="{tgt}: {text}"
    )
    assert b.model_type == "causal" and b.tokenizer.padding_side == "left"
    (prompt,) = b.model_inputs(["wo ist der bahnhof"], "de", "en")
    assert prompt == "<|user|> en: wo ist der bahnhof\n<|assistant|> "
    sys_b = TransformersBackend(str(tiny_models["granite"]), system_prompt="You translate.", max_new_tokens=2)
    (prompt,) = sys_b.model_inputs(["hallo"], "en", "de")
    assert prompt.startswith(
        "<|system|> You translate.\n<|user|> Translate the following English text into German."
    )
    out = b.translate(SENTENCES, "en", "de")
    assert len(out) == len(SENTENCES) and all(isinstance(o, str) for o in out)
    b.batch_size = 1
    assert b.translate(SENTENCES, "en", "de") == out  # left padding: same continuation
    with pytest.raises(ValueError, match="chat template"):
        TransformersBackend(str(tiny_models["granite_nochat"]))


# ------------------------------------------------------------------------------------ generator


def _rows(out: Path) -> list[dict]:
    rows: list[dict] = []
    for p in sorted((out / "data").glob("*.parquet")):
        rows += pq.read_table(p).to_pylist()
    return rows


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]


def _hashes(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted((out / "data").glob("*.parquet"))
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """24 English utterances in 2 parquet files; -> (folder, {id: text})."""
    root = tmp_path_factory.mktemp("asr")
    make_corpus(root, "cv", 24, num_shards=2, seed=3)
    rows = []
    for p in sorted((root / "cv").glob("*.parquet")):
        rows += pq.read_table(p).to_pylist()
    return root / "cv", {r["id"]: r["text"] for r in rows}


def _generate(server: FakeServer, src, out: Path, **kw):
    kw = {
        "primary": server.backend("mt-a"),
        "secondary": server.backend("mt-b"),
        "source_language": "en",
        "target_languages": ["de", "ja"],
        "shard_size": 10,
        "batch_size": 4,
        "progress": False,
        **kw,
    }
    return generate_translations(str(src), out, **kw)


def test_end_to_end_keeps_exactly_the_agreeing_pairs(server: FakeServer, corpus, tmp_path: Path) -> None:
    src, texts = corpus
    agreeing = [i for i, t in texts.items() if "golf" not in t.split()]
    assert 0 < len(agreeing) < len(texts)  # the corpus has both kinds
    out = tmp_path / "ast"
    s = _generate(server, src, out)
    expected = 2 * len(agreeing)
    assert (s.num_records, s.num_pairs, s.num_kept) == (24, 48, expected)
    assert s.rejects == {"disagreement": 48 - expected}
    assert s.per_pair["en-de"]["kept"] == s.per_pair["en-ja"]["kept"] == len(agreeing)
    assert (s.shards_written, s.shards_skipped, s.pairs_translated) == (3, 0, 48)
    assert sorted(p.name for p in (out / "data").glob("*.parquet")) == [
        f"train-0000{i}.parquet" for i in range(3)
    ]

    rows = _rows(out)
    assert len(rows) == expected
    assert list(rows[0]) == list(features())
    source_audio = {}
    for p in sorted(src.glob("*.parquet")):
        source_audio.update({r["id"]: r["audio"]["bytes"] for r in pq.read_table(p).to_pylist()})
    for r in rows:
        sid, pair = r["id"].rsplit(".", 1)
        assert pair == f"en-{r['target_language']}" and sid in agreeing
        assert r["source_text"] == texts[sid] and r["source_language"] == "en"
        assert r["audio"]["bytes"] == source_audio[sid]  # passed through byte for byte
        assert (
            r["target_text"]
            == r["primary_output"]
            == fake_translate("mt-a", r["target_language"], texts[sid])
        )
        assert r["secondary_output"] == fake_translate("mt-b", r["target_language"], texts[sid])
        assert (r["primary_backend"], r["secondary_backend"], r["task"]) == ("mt-a", "mt-b", "ast")
        assert r["agreement_metric"] == ("cer" if r["target_language"] == "ja" else "wer")
        assert r["agreement_score"] == 0.0 and r["target_format"] == "translation"

    rejects = _rejects(out)
    assert len(rejects) == 48 - expected
    for rec in rejects:
        assert rec["reason"] == "disagreement" and "golf" in rec["source_text"].split()
        assert rec["primary_output"] and rec["secondary_output"] and rec["agreement_score"] > 0.3
        assert rec["shard"].startswith("train-")

    card = (out / "README.md").read_text(encoding="utf-8")
    rate = f"{100 * expected / 48:.1f}%"
    assert f"- Keep rate: {expected} of 48 translation pairs kept ({rate})" in card
    assert f"| train | en-de | 24 | {len(agreeing)} | {100 * len(agreeing) / 24:.1f}% |" in card
    assert f"- disagreement: {48 - expected}" in card
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["language"] == ["de", "en", "ja"]
    assert meta["dataset_info"]["splits"][0]["num_examples"] == expected
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}]

    from datasets import load_dataset  # the card's configs make the folder loadable as is

    ds = load_dataset(str(out), split="train", streaming=True)
    first = next(iter(ds.decode(False)))
    assert first["task"] == "ast" and first["audio"]["bytes"] == rows[0]["audio"]["bytes"]


def test_reject_reasons_are_counted_and_listed(server: FakeServer, tmp_path: Path) -> None:
    def audio(i):
        return {"bytes": audio_bytes(speechlike(0.5, seed=i)), "path": None}

    rows = [
        {"id": "ok", "audio": audio(0), "text": "alpha  bravo", "language": "en"},
        {"id": "notext", "audio": audio(1), "text": "  ", "language": "en"},
        {"id": "noaudio", "audio": {"bytes": None, "path": None}, "text": "charlie", "language": "en"},
        {"id": "error", "audio": audio(2), "text": "FAILME alpha", "language": "en"},
        {"id": "empty", "audio": audio(3), "text": "EMPTYME delta", "language": "en"},
        {"id": "copy", "audio": audio(4), "text": "COPYME echo", "language": "en"},
        {"id": "disagree", "audio": audio(5), "text": "golf hotel", "language": "en"},
        {"id": "ok2", "audio": audio(6), "text": "hotel echo", "language": "en"},
    ]
    write_parquet(tmp_path / "edge" / "train-00000.parquet", rows)
    out = tmp_path / "ast"
    s = _generate(
        server,
        tmp_path / "edge",
        out,
        target_languages=["de"],
        secondary=server.backend("mt-b", max_retries=1),
    )
    assert s.num_kept == 2 and s.num_pairs == 8
    assert s.rejects == {
        "backend_error": 1,
        "copied_source": 1,
        "disagreement": 1,
        "empty_output": 1,
        "missing_audio": 1,
        "missing_text": 1,
    }
    assert [r["source_text"] for r in _rows(out)] == ["alpha bravo", "hotel echo"]  # whitespace collapsed
    by_id = {r["id"]: r for r in _rejects(out)}
    assert list(by_id) == [f"{i}.en-de" for i in ("notext", "noaudio", "error", "empty", "copy", "disagree")]
    assert by_id["error.en-de"]["reason"] == "backend_error"
    assert "secondary: TranslationError: HTTP 500" in by_id["error.en-de"]["detail"]
    assert by_id["error.en-de"]["primary_output"] == "Failme eins."
    assert by_id["empty.en-de"]["detail"] == "primary empty"
    assert by_id["copy.en-de"]["primary_output"] == "COPYME echo"
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "- Keep rate: 2 of 8 translation pairs kept (25.0%)" in card
    assert "- backend_error: 1" in card and "- missing_text: 1" in card

    kept = _generate(
        server, tmp_path / "edge", tmp_path / "copies", target_languages=["de"], reject_copies=False
    )
    # the copy is now scored like any output: the secondary translated, so they disagree
    assert kept.rejects.get("copied_source") is None and kept.rejects["disagreement"] == 2


def test_dead_backend_stops_the_run_without_writing(server: FakeServer, corpus, tmp_path: Path) -> None:
    src, _ = corpus
    out = tmp_path / "ast"
    with pytest.raises(
        BackendFailureError, match=r"secondary backend 'broken' is failing \(20 of 20 pairs\)"
    ):
        _generate(server, src, out, secondary=server.backend("broken", max_retries=0))
    assert not (out / "data").exists() and not (out / STATE_DIR).exists()
    assert not (out / "README.md").exists()


def test_sentence_level_failures_only_reject(server: FakeServer, corpus, tmp_path: Path) -> None:
    src, _ = corpus
    s = _generate(server, src, tmp_path / "a", max_records=1, secondary=server.backend("bad-request"))
    assert (s.num_kept, s.rejects) == (0, {"backend_error": 2})  # HTTP 400: the sentence, not the server
    (rec, _) = _rejects(tmp_path / "a")
    assert "secondary: TranslationError: HTTP 400" in rec["detail"]
    with pytest.raises(BackendFailureError):  # HTTP 500 after every retry: the server
        _generate(
            server, src, tmp_path / "b", max_records=1, secondary=server.backend("broken", max_retries=0)
        )


def test_transcription_share_is_seeded_and_layout_independent(
    server: FakeServer, corpus, tmp_path: Path
) -> None:
    src, texts = corpus
    everything = _generate(server, src, tmp_path / "all", transcription_share=1.0)
    rows = _rows(tmp_path / "all")
    assert everything.num_transcription_format == len(rows)
    for r in rows:
        assert r["target_format"] == "transcription_translation"
        assert r["target_text"] == f"[Transcription] {r['source_text']} [Translation] {r['primary_output']}"
        assert r["target_text"] == TRANSCRIPTION_TEMPLATE.format(
            transcription=texts[r["id"].rsplit(".", 1)[0]], translation=r["primary_output"]
        )

    def chosen(out: Path, **kw) -> set[str]:
        _generate(server, src, out, transcription_share=0.5, **kw)
        return {r["id"] for r in _rows(out) if r["target_format"] == "transcription_translation"}

    a = chosen(tmp_path / "a", seed=1)
    assert 0 < len(a) < len(rows)
    assert chosen(tmp_path / "b", seed=1, shard_size=7, batch_size=1) == a  # same seed, other layout
    assert chosen(tmp_path / "c", seed=2) != a
    none = _generate(server, src, tmp_path / "none")
    assert none.num_transcription_format == 0


def test_one_target_per_record(server: FakeServer, corpus, tmp_path: Path) -> None:
    src, texts = corpus
    s = _generate(server, src, tmp_path / "one", target_assignment="one", seed=5)
    assert s.num_pairs == 24 and s.num_kept + sum(s.rejects.values()) == 24
    assigned = {r["id"] for r in _rows(tmp_path / "one")} | {r["id"] for r in _rejects(tmp_path / "one")}
    assert {i.rsplit(".", 1)[0] for i in assigned} == set(texts)
    assert {i.rsplit("-", 1)[1] for i in assigned} == {"de", "ja"}
    _generate(server, src, tmp_path / "one2", target_assignment="one", seed=5)
    assert _hashes(tmp_path / "one") == _hashes(tmp_path / "one2")


def test_resume_skips_finished_shards(server: FakeServer, corpus, tmp_path: Path) -> None:
    src, _ = corpus
    out = tmp_path / "ast"
    first = _generate(server, src, out)
    shards = _hashes(out)
    card = (out / "README.md").read_text(encoding="utf-8")
    rejects = (out / "rejects.jsonl").read_text(encoding="utf-8")
    before = sum(server.requests.values())

    again = _generate(server, src, out)
    assert sum(server.requests.values()) == before  # nothing translated again
    assert (again.shards_written, again.shards_skipped, again.pairs_translated) == (0, 3, 0)
    assert again.num_kept == first.num_kept and again.rejects == first.rejects
    assert _hashes(out) == shards
    assert (out / "README.md").read_text(encoding="utf-8") == card
    assert (out / "rejects.jsonl").read_text(encoding="utf-8") == rejects

    (out / "data" / "train-00001.parquet").unlink()  # e.g. killed while writing it
    redo = _generate(server, src, out)
    assert (redo.shards_written, redo.shards_skipped, redo.pairs_translated) == (1, 2, 20)
    assert _hashes(out) == shards

    stricter = _generate(server, src, out, agreement_config=AgreementConfig(max_wer=0.1))
    assert stricter.shards_written == 3  # settings are part of every shard's fingerprint

    fewer = _generate(server, src, out, max_records=10)
    assert fewer.num_records == 10 and sorted((out / "data").iterdir()) == [
        out / "data" / "train-00000.parquet"
    ]
    assert len(list((out / ".shards").glob("*.json"))) == 1


def test_deterministic_whatever_batch_size_and_concurrency(
    server: FakeServer, corpus, tmp_path: Path
) -> None:
    src, _ = corpus
    _generate(server, src, tmp_path / "a", transcription_share=0.3, seed=7)
    _generate(
        server,
        src,
        tmp_path / "b",
        transcription_share=0.3,
        seed=7,
        batch_size=64,
        parallel_backends=False,
        primary=server.backend("mt-a", concurrency=1),
        secondary=server.backend("mt-b", concurrency=16),
    )
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    for name in ("README.md", "rejects.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_jsonl_manifest_audio_is_embedded(server: FakeServer, tmp_path: Path) -> None:
    folder = tmp_path / "manifest"
    folder.mkdir()
    lines = []
    for i, text in enumerate(["alpha bravo", "charlie delta"]):
        (folder / f"u{i}.flac").write_bytes(audio_bytes(speechlike(0.4, seed=i)))
        lines.append(json.dumps({"id": f"u{i}", "audio_filepath": f"u{i}.flac", "text": text}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    spec = SourceSpec("manifest", str(folder / "train.jsonl"))
    out = tmp_path / "ast"
    generate_translations(
        spec,
        out,
        primary=server.backend("mt-a"),
        secondary=server.backend("mt-b"),
        source_language="en",
        target_languages=["de"],
        progress=False,
    )
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["u0.en-de", "u1.en-de"]
    assert rows[0]["audio"] == {"bytes": (folder / "u0.flac").read_bytes(), "path": "u0.flac"}


def test_generator_rejects_bad_settings(server: FakeServer, corpus, tmp_path: Path) -> None:
    src, _ = corpus
    with pytest.raises(ValueError, match="unsupported translation pair en->ko"):
        _generate(server, src, tmp_path / "x", target_languages=["de", "ko"])
    with pytest.raises(ValueError, match="unsupported translation pair de->ja"):
        _generate(server, src, tmp_path / "x", source_language="de", target_languages=["ja"])
    with pytest.raises(ValueError, match="same backend"):
        _generate(server, src, tmp_path / "x", secondary=server.backend("mt-a"))
    with pytest.raises(ValueError, match="transcription_share"):
        _generate(server, src, tmp_path / "x", transcription_share=1.5)
    assert not (tmp_path / "x").exists()


def test_generator_with_transformers_backends(tiny_models, corpus, tmp_path: Path) -> None:
    src, _ = corpus
    seq2seq = TransformersBackend(str(tiny_models["marian"]), max_new_tokens=6)
    causal = TransformersBackend(str(tiny_models["granite"]), max_new_tokens=6)
    s = generate_translations(
        str(src),
        tmp_path / "ast",
        primary=seq2seq,
        secondary=causal,
        source_language="en",
        target_languages=["de"],
        max_records=6,
        agreement_config=AgreementConfig(max_wer=100.0),  # random models never agree otherwise
        progress=False,
    )
    assert s.num_pairs == 6 and s.num_kept + sum(s.rejects.values()) == 6
    for r in _rows(tmp_path / "ast"):
        assert (r["primary_backend"], r["secondary_backend"]) == ("marian", "granite")
    card = (tmp_path / "ast" / "README.md").read_text(encoding="utf-8")
    assert "MarianMTModel" in card and "GraniteForCausalLM" in card


# ------------------------------------------------------------------------------------------- CLI


def test_cli_help(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli_main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--primary-base-url" in text and "--secondary-lang-codes" in text and "en->zh" in text


def _cli_args(server: FakeServer, src: Path, out: Path, *extra: str) -> list[str]:
    args = ["--source", str(src), "--source-language", "en", "--target-languages", "de,ja", "--out", str(out)]
    for role, model in (("primary", "mt-a"), ("secondary", "mt-b")):
        args += [f"--{role}-backend", "openai", f"--{role}-base-url", server.url, f"--{role}-model", model]
        args += [f"--{role}-prompt", TEST_PROMPT]
    return args + ["--shard-size", "10", "--quiet", *extra]


def test_cli_end_to_end_matches_api(server: FakeServer, corpus, tmp_path: Path) -> None:
    src, _ = corpus
    s = run_cli(_cli_args(server, src, tmp_path / "cli", "--transcription-share", "0.3", "--seed", "7"))
    _generate(server, src, tmp_path / "api", transcription_share=0.3, seed=7)
    assert _hashes(tmp_path / "cli") == _hashes(tmp_path / "api")
    assert s.num_kept == len(_rows(tmp_path / "cli"))
    card = (tmp_path / "cli" / "README.md").read_text(encoding="utf-8")
    assert "python -m data_prep.translate --source" in card


def _set(args: list[str], flag: str, value: str | None) -> list[str]:
    """Replace a flag's value, or drop the flag when ``value`` is None."""
    i = args.index(flag)
    if value is None:
        del args[i : i + 2]
    else:
        args[i + 1] = value
    return args


def test_cli_transformers_backend_and_errors(server: FakeServer, tiny_models, corpus, tmp_path: Path) -> None:
    src, _ = corpus
    args = _cli_args(server, src, tmp_path / "tf", "--max-records", "4", "--max-wer", "100")
    _set(args, "--primary-backend", "transformers")
    _set(args, "--primary-model", str(tiny_models["marian"]))
    _set(args, "--primary-base-url", None)
    s = run_cli([*args, "--primary-max-new-tokens", "4", "--primary-source-prefix", "<2{tgt}> "])
    assert s.num_pairs == 8 and s.num_kept + sum(s.rejects.values()) == 8
    with pytest.raises(SystemExit, match="unsupported translation pair en->ko"):
        run_cli(_set(_cli_args(server, src, tmp_path / "ko"), "--target-languages", "de,ko"))
    with pytest.raises(SystemExit, match="needs --secondary-base-url"):
        run_cli(_set(_cli_args(server, src, tmp_path / "nourl"), "--secondary-base-url", None))


# -------------------------------------------------------------------------------- Apertium

FAKE_APERTIUM = r"""#!/usr/bin/env python3
# Stand-in for the apertium CLI: -l lists modes; a mode tags every line with itself.
import os, sys
args = [a for a in sys.argv[1:] if a != "-u"]
modes = ["en-ca", "ca-es", "eng-spa"]
if args == ["-l"]:
    print("\n".join(modes)); sys.exit(0)
if "-h" in args:
    print("Apertium 9.9.9"); sys.exit(0)
mode = args[-1]
if mode not in modes:
    sys.stderr.write("Error: Mode %s does not exist\n" % mode); sys.exit(1)
lines = sys.stdin.read().split("\n")[:-1]
if os.environ.get("FAKE_APERTIUM_MERGE") and len(lines) > 1:
    lines = [" ".join(lines)]  # loses the line alignment of a batch
for line in lines:
    if "CRASH" in line:
        sys.stderr.write("boom\n"); sys.exit(2)
    if mode == "ca-es":  # the pivot route words one thing differently
        line = " ".join("gulf" if w == "golf" else w for w in line.split(" "))
    print("%s[%s]" % (line, mode) if os.environ.get("FAKE_APERTIUM_TAG") else line)
"""


@pytest.fixture
def fake_apertium(tmp_path: Path, monkeypatch) -> str:
    monkeypatch.setenv("FAKE_APERTIUM_TAG", "1")  # outputs name the modes that made them
    exe = tmp_path / "apertium"
    exe.write_text(FAKE_APERTIUM)
    exe.chmod(0o755)
    return str(exe)


def test_apertium_route_resolves_three_letter_modes_and_chains(fake_apertium: str) -> None:
    from data_prep.translate.backends import ApertiumBackend

    direct = ApertiumBackend(executable=fake_apertium)
    assert direct.resolve("en", "es") == ["eng-spa"]  # en-es is installed as eng-spa
    assert direct.translate(["Hello there.", "Two\nlines"], "en", "es") == [
        "Hello there.[eng-spa]",
        "Two lines[eng-spa]",  # a newline inside a sentence must not split it
    ]
    pivot = ApertiumBackend("{src}-ca,ca-{tgt}", executable=fake_apertium)
    assert pivot.name == "apertium:{src}-ca,ca-{tgt}"
    assert pivot.describe()["version"] == "9.9.9"
    assert pivot.translate(["Hi"], "en", "es") == ["Hi[en-ca][ca-es]"]  # modes in route order


def test_apertium_missing_mode_and_installation_are_clear_errors(fake_apertium: str, tmp_path: Path) -> None:
    from data_prep.translate.backends import ApertiumBackend

    with pytest.raises(ValueError, match=r"'en-de' is not installed.*apertium-eng-deu"):
        ApertiumBackend(executable=fake_apertium).translate(["x"], "en", "de")
    with pytest.raises(ValueError, match="no Apertium installation"):
        ApertiumBackend(executable=str(tmp_path / "no-such-apertium"))
    with pytest.raises(ValueError, match="unsupported translation pair"):
        ApertiumBackend(executable=fake_apertium).translate(["x"], "ca", "es")


def test_apertium_failures_are_per_sentence(fake_apertium: str, monkeypatch) -> None:
    from data_prep.translate.backends import ApertiumBackend, TranslationError

    backend = ApertiumBackend(executable=fake_apertium)
    out = backend.translate(["fine", "CRASH here", "also fine"], "en", "es")
    assert out[0] == "fine[eng-spa]" and out[2] == "also fine[eng-spa]"
    assert isinstance(out[1], TranslationError) and "exited with 2" in str(out[1])
    # a batch whose output lost its line alignment is redone sentence by sentence, not misassigned
    monkeypatch.setenv("FAKE_APERTIUM_MERGE", "1")
    assert backend.translate(["a", "b", "c"], "en", "es") == ["a[eng-spa]", "b[eng-spa]", "c[eng-spa]"]


def test_apertium_cli_end_to_end(fake_apertium: str, corpus, tmp_path: Path, monkeypatch) -> None:
    from data_prep.translate.agreement import AgreementConfig, agreement

    monkeypatch.setenv("PATH", f"{Path(fake_apertium).parent}:{os.environ['PATH']}")
    monkeypatch.delenv("FAKE_APERTIUM_TAG")
    src, texts = corpus
    out = tmp_path / "ast"
    # primary: the direct pair; secondary: through Catalan (no --*-model needed for apertium)
    s = run_cli(
        ["--source", str(src), "--source-language", "en", "--target-languages", "es", "--out", str(out),
         "--quiet", "--no-embed-audio", "--keep-copies",  # the fake passes most words through
         "--primary-backend", "apertium", "--secondary-backend", "apertium",
         "--secondary-route", "{src}-ca,ca-{tgt}"]
    )  # fmt: skip

    def pivot(text: str) -> str:
        return " ".join("gulf" if w == "golf" else w for w in text.split(" "))

    config = AgreementConfig()
    expected = {i: agreement(t, pivot(t), "es", config).agree for i, t in texts.items()}
    assert 0 < sum(expected.values()) < len(texts)  # the corpus has both kinds
    assert (s.num_pairs, s.num_kept) == (len(texts), sum(expected.values()))
    for r in _rows(out):
        sid = r["id"].rsplit(".", 1)[0]
        assert expected[sid] and r["primary_output"] == texts[sid]
        assert r["secondary_output"] == pivot(texts[sid])
        assert (r["primary_backend"], r["secondary_backend"]) == (
            "apertium:{src}-{tgt}",
            "apertium:{src}-ca,ca-{tgt}",
        )
    with pytest.raises(SystemExit, match="needs --primary-model"):
        run_cli(["--source", str(src), "--source-language", "en", "--target-languages", "es",
                 "--out", str(tmp_path / "x"), "--primary-backend", "openai", "--primary-base-url", "http://h",
                 "--secondary-backend", "apertium"])  # fmt: skip


@pytest.mark.skipif(
    not {"en-es", "eng-spa"} & apertium_modes(),
    reason="Apertium with the English-Spanish pair is not installed (apt-get install apertium-eng-spa)",
)
def test_real_apertium_translates_english_to_spanish() -> None:
    from data_prep.translate.backends import ApertiumBackend

    out = ApertiumBackend().translate(["The house is red.", "I have two dogs."], "en", "es")
    assert out[0].lower().startswith("la casa") and "roja" in out[0].lower()
    assert "perros" in out[1].lower()
