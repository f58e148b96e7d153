"""EncoderOutputCache: frozen-encoder outputs served from memory, exactly, and only when valid."""

from __future__ import annotations

import pytest
import torch

from granite_train.models.encoder_cache import EncoderOutputCache, check_encoder_cache_allowed


class CountingEncoder:
    """A deterministic stand-in encoder (per-frame, padding zeroed) that records what it is given."""

    def __init__(self, width: int = 6):
        torch.manual_seed(0)
        self.weight = torch.randn(4, width)
        self.calls: list[int] = []

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        self.calls.append(features.shape[0])
        hidden = torch.tanh(features @ self.weight)
        mask = torch.arange(features.shape[1])[None, :] < lengths[:, None]
        return hidden * mask.unsqueeze(-1)


def _batch(lengths, seed=0, width=4):
    g = torch.Generator().manual_seed(seed)
    feats = torch.zeros(len(lengths), max(lengths), width)
    for i, n in enumerate(lengths):
        feats[i, :n] = torch.randn(n, width, generator=g)
    return feats, torch.tensor(lengths)


def test_cached_output_equals_encoder_and_skips_it_on_hits():
    enc = CountingEncoder()
    cache = EncoderOutputCache(1 << 20)
    feats, lengths = _batch([7, 4, 9])
    first = cache(["a", "b", "c"], feats, lengths, enc)
    assert torch.allclose(first, enc(feats, lengths))
    enc.calls.clear()
    # the same utterances in another order and another padded length: no encoder call
    order = [2, 0]
    wider = torch.cat([feats[order], torch.zeros(2, 3, 4)], dim=1)
    again = cache(["c", "a"], wider, lengths[order], enc)
    assert enc.calls == []
    assert again.shape == (2, 12, 6)
    assert torch.equal(again[:, :9], first[order])
    assert float(again[:, 9:].abs().sum()) == 0.0
    assert cache.counts == {"hits": 2, "misses": 3}
    assert len(cache) == 3 and cache.bytes == (7 + 4 + 9) * 6 * 4


def test_only_missing_utterances_are_encoded():
    enc = CountingEncoder()
    cache = EncoderOutputCache(1 << 20)
    feats, lengths = _batch([5, 8, 3])
    cache(["a", "b", "c"][:1], feats[:1, :5], lengths[:1], enc)
    enc.calls.clear()
    out = cache(["a", "b", "c"], feats, lengths, enc)
    assert enc.calls == [1, 1]  # b and c only, each alone
    assert torch.allclose(out, enc(feats, lengths))


def test_a_cached_output_is_the_utterance_encoded_alone_whatever_its_batch():
    """So a resumed run, whose cache starts empty, caches exactly the values the first run did."""
    from granite_train.models.encoder import CTCEncoder, encoder_config

    torch.manual_seed(0)
    encoder = CTCEncoder(
        encoder_config("tiny", num_layers=2, hidden_dim=32, num_heads=2, dim_head=16, input_dim=4)
    )
    encoder.eval()

    def encode(features, lengths):
        return encoder(features, lengths).last_hidden_state

    feats, lengths = _batch([5, 40, 9])
    in_batch = EncoderOutputCache(1 << 20)(["a", "b", "c"], feats, lengths, encode)
    for i, n in enumerate(lengths.tolist()):
        with torch.no_grad():
            alone = encode(feats[i : i + 1, :n], lengths[i : i + 1])[0]
        assert torch.equal(in_batch[i, :n], alone)


def test_same_id_with_other_features_is_an_error():
    enc = CountingEncoder()
    cache = EncoderOutputCache(1 << 20)
    feats, lengths = _batch([5, 6])
    cache(["a", "b"], feats, lengths, enc)
    other, _ = _batch([5, 6], seed=1)
    with pytest.raises(ValueError, match="'a' came back with different features"):
        cache(["a", "b"], other, lengths, enc)
    with pytest.raises(ValueError, match="different features"):
        cache(["b"], feats[1:, :4], torch.tensor([4]), enc)  # another length


def test_full_cache_stops_adding_but_stays_correct(caplog):
    enc = CountingEncoder()
    cache = EncoderOutputCache(5 * 6 * 4)  # room for one 5-frame utterance
    feats, lengths = _batch([5, 5])
    with caplog.at_level("WARNING"):
        out = cache(["a", "b"], feats, lengths, enc)
    assert len(cache) == 1 and cache.counts["full"] == 1
    assert "encoder cache full" in caplog.text
    enc.calls.clear()
    assert torch.allclose(cache(["a", "b"], feats, lengths, enc), out)
    assert enc.calls == [1]  # b is encoded again every time


def test_cache_is_refused_where_outputs_would_go_stale():
    check_encoder_cache_allowed({"encoder_cache_gb": 0}, {"augment": {"spec_augment": {"num_freq_masks": 2}}})
    check_encoder_cache_allowed({"encoder_cache_gb": 1}, {"augment": {"spec_augment": None, "noise": None}})
    with pytest.raises(ValueError, match="spec_augment"):
        check_encoder_cache_allowed(
            {"encoder_cache_gb": 1}, {"augment": {"spec_augment": {"num_freq_masks": 2}}}
        )
    with pytest.raises(ValueError, match="noise"):
        check_encoder_cache_allowed({"encoder_cache_gb": 1}, {"augment": {"noise": {"snr_db": [5, 20]}}})
    with pytest.raises(ValueError, match="frozen encoder"):
        check_encoder_cache_allowed({"encoder_cache_gb": 1, "train": {"encoder": True}}, {})
    with pytest.raises(ValueError, match="> 0"):
        EncoderOutputCache(0)
