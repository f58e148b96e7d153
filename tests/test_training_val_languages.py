"""Stage-1 validation of a multilingual run: CER per language, Japanese scored on its katakana target."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from granite_train.models.encoder import EncoderOutput
from granite_train.text.targets import CTCTargetBuilder
from granite_train.training.config import OptimConfig
from granite_train.training.ctc_module import CTCPretrainModule

TINY = {"preset": "tiny", "encoder": {"num_layers": 2, "hidden_dim": 32, "num_heads": 2, "dim_head": 16}}


class SpellingEncoder(torch.nn.Module):
    """Stands in for the encoder: logits that spell given label sequences, one frame per label."""

    def __init__(self, spelled: list[list[int]], vocab_size: int) -> None:
        super().__init__()
        self.spelled, self.vocab_size = spelled, vocab_size

    def forward(self, features, lengths) -> EncoderOutput:
        frames = max(2 * len(s) for s in self.spelled)
        logits = torch.full((len(self.spelled), frames, self.vocab_size), -10.0)
        logits[:, :, 0] = 10.0  # blank everywhere ...
        for b, ids in enumerate(self.spelled):
            for k, i in enumerate(ids):  # ... but each label on every other frame (repeats stay apart)
                logits[b, 2 * k, 0], logits[b, 2 * k, i] = -10.0, 10.0
        out_lengths = torch.tensor([2 * len(s) for s in self.spelled])
        return EncoderOutput(logits, logits, None, out_lengths)


def test_validation_scores_each_language_and_japanese_on_its_katakana():
    pytest.importorskip("sudachipy")
    module = CTCPretrainModule(TINY, OptimConfig(), total_steps=10)
    builder = CTCTargetBuilder(module.vocab, lowercase=True, strip_punctuation=True)
    texts = ["Guten Morgen.", "今日は雨です。", "hola amigo"]
    languages = ["de", "ja", "es"]
    targets = [builder(t, lang) for t, lang in zip(texts, languages)]
    katakana = builder.target_text(texts[1], "ja")
    assert katakana and all("\u30a1" <= c <= "\u30fc" for c in katakana.replace(" ", ""))
    spelled = [targets[0], targets[1], module.vocab.encode("hola amiga")]  # one error in Spanish
    module.encoder = SpellingEncoder(spelled, len(module.vocab))
    padded = torch.zeros(3, max(map(len, targets)), dtype=torch.long)
    for b, t in enumerate(targets):
        padded[b, : len(t)] = torch.tensor(t)
    batch = SimpleNamespace(
        features=torch.zeros(3, 40, 160),
        feature_lengths=torch.full((3,), 40),
        targets=padded,
        target_lengths=torch.tensor([len(t) for t in targets]),
        texts=texts,
        languages=languages,
    )
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    module._trainer = SimpleNamespace(world_size=1, is_global_zero=True, global_step=0)
    module.on_validation_epoch_start()
    module.validation_step(batch, 0)
    module.on_validation_epoch_end()

    assert logged["val/cer/de"] == 0.0  # "guten morgen" against the basic-normalised "Guten Morgen."
    assert logged["val/cer/ja"] == 0.0  # scored on the katakana target, not on the kanji text
    assert logged["val/cer/es"] == pytest.approx(1 / len("hola amigo"))
    assert logged["val/wer/es"] == pytest.approx(1 / 2)
    assert {k for k in logged if k.startswith("val/cer")} == {
        "val/cer",
        "val/cer/de",
        "val/cer/es",
        "val/cer/ja",
    }
