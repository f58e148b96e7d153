"""``granite-train eval model_path=<5.0 TurboCTC folder>``: greedy BPE-CTC through the same pipeline
and scoring as a 4.0 encoder, against plain transformers decoding each clip alone."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCTC, AutoProcessor

from granite_train.audio.io import load_audio
from granite_train.eval.metrics import error_rates
from granite_train.eval.run import run_eval
from granite_train.eval.turboctc import is_turboctc_folder
from granite_train.models.turboctc import build_bpe_tokenizer, save_turboctc, tiny_turboctc_config
from tests.corpus import make_corpus


def test_eval_of_a_turboctc_folder_matches_transformers_clip_by_clip(tmp_path):
    import pyarrow.parquet as pq
    from transformers import GraniteSpeech5ForCTC

    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    tokenizer = build_bpe_tokenizer([" ".join(words)] * 4, vocab_size=40)
    torch.manual_seed(0)
    model = GraniteSpeech5ForCTC(tiny_turboctc_config(vocab_size=len(tokenizer))).eval()
    folder = save_turboctc(model, tokenizer, tmp_path / "turbo")
    assert is_turboctc_folder(folder) and not is_turboctc_folder(tmp_path)
    ids = make_corpus(tmp_path / "set", "test", n=5, num_shards=1, durations=(0.8, 1.6), seed=3)

    # max_frames 100 (2 s): one clip per batch, so the reference below decodes exactly those inputs
    spec = {"name": "mini", "path": str(tmp_path / "set" / "test"), "kind": "parquet", "language": "en"}
    (result,), _ = run_eval(
        folder, [spec], tmp_path / "out", max_frames=100, progress=False, normalizer="basic"
    )
    rows = [json.loads(line) for line in (tmp_path / "out" / "hypotheses.jsonl").read_text().splitlines()]
    assert [r["id"].split("/", 1)[1] for r in rows] == sorted(ids) and result.num_utts == 5

    # plain transformers: the Auto classes, each clip alone, the tokenizer's own CTC grouping
    ref_model, processor = (
        AutoModelForCTC.from_pretrained(folder).eval(),
        AutoProcessor.from_pretrained(folder),
    )
    table = pq.read_table(next((tmp_path / "set" / "test").glob("*.parquet"))).to_pylist()
    expected = {}
    for row in table:
        audio = load_audio(row["audio"]["bytes"], 16000).numpy()
        inputs = processor(audio, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            path = ref_model(**inputs).logits.argmax(-1)[0].tolist()
        text = processor.tokenizer.decode(path, skip_special_tokens=True)  # groups repeats, drops blanks
        expected[row["id"]] = " ".join(text.split())
    assert {r["id"].split("/", 1)[1]: r["hypothesis"] for r in rows} == expected
    again = error_rates([r["reference"] for r in rows], [r["hypothesis"] for r in rows], "basic")
    assert result.wer == again["wer"] and result.details["decoding"] == "greedy_ctc"
