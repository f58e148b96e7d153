"""CTCEncoder: parity with transformers' GraniteSpeechCTCEncoder, padding masks, checkpointing, presets."""

import pytest
import torch
from transformers.models.granite_speech.modeling_granite_speech import GraniteSpeechCTCEncoder

from granite_train.models import CTCEncoder, encoder_config
from granite_train.models.encoder import attention_dists, shaw_bias

# small blocks so that a 21-frame input spans several attention blocks and a partial last one
TEST_OVERRIDES = dict(
    num_layers=4, hidden_dim=64, num_heads=4, dim_head=16, context_size=8, max_pos_emb=16, output_dim=20
)


def _cfg(**kw):
    return encoder_config("tiny", **{**TEST_OVERRIDES, **kw})


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    return GraniteSpeechCTCEncoder(_cfg()).eval()


def _ours(ref, attn_impl="math", **kw) -> CTCEncoder:
    model = CTCEncoder(ref.config, attn_impl=attn_impl, **kw)
    model.load_state_dict(ref.state_dict(), strict=True)
    return model.eval()


def _randomize_bn(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial BatchNorm running stats so eval-mode tests exercise them."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)


def test_state_dict_keys_and_shapes_match_reference(ref):
    ours = CTCEncoder(ref.config)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }


def test_state_dict_loads_both_ways(ref):
    ours = _ours(ref)
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    torch.manual_seed(5)
    other = CTCEncoder(ref.config)
    back = GraniteSpeechCTCEncoder(ref.config)
    back.load_state_dict(other.state_dict(), strict=True)
    for k, v in other.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


@pytest.mark.parametrize("attn_impl", ["math", "sdpa"])
@pytest.mark.parametrize("num_frames", [21, 16, 3])
def test_forward_parity_with_reference(ref, attn_impl, num_frames):
    _randomize_bn(ref)
    ours = _ours(ref, attn_impl)
    x = torch.randn(2, num_frames, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        r = ref(x).last_hidden_state
        o = ours(x)
    assert o.logits.shape == (2, num_frames, 20)
    assert (o.last_hidden_state - r).abs().max() <= 1e-5
    assert (o.logits - ref.out(r)).abs().max() <= 1e-5
    assert torch.equal(o.lengths, torch.tensor([num_frames, num_frames]))


def test_forward_parity_reference_loads_ours():
    torch.manual_seed(3)
    ours = CTCEncoder(_cfg(), attn_impl="sdpa").eval()
    _randomize_bn(ours)
    ref = GraniteSpeechCTCEncoder(ours.config).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 19, 160)
    with torch.no_grad():
        assert (ours(x).last_hidden_state - ref(x).last_hidden_state).abs().max() <= 1e-5


def test_mid_logits_are_reference_self_conditioning(ref):
    """mid_logits = out(h) after layer num_layers//2, as the reference computes internally."""
    ours = _ours(ref)
    x = torch.randn(2, 11, 160)
    with torch.no_grad():
        hidden = ref.input_linear(x)
        for layer in ref.layers[: ref.config.num_layers // 2]:  # the reference's layers, run by hand
            hidden = layer(hidden, attention_dists=ref.attention_dists)
        expected = ref.out(hidden)
        o = ours(x)
    assert o.mid_logits.shape == (2, 11, 20)
    assert (o.mid_logits - expected).abs().max() <= 1e-5


def test_single_layer_has_no_mid_logits():
    model = CTCEncoder(_cfg(num_layers=1)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 5, 160)).mid_logits is None


@pytest.mark.parametrize("attn_impl", ["math", "sdpa"])
def test_padding_invariance_eval(ref, attn_impl):
    _randomize_bn(ref)
    model = _ours(ref, attn_impl)
    lengths = torch.tensor([21, 16, 13, 5, 1])
    x = torch.randn(5, 21, 160)
    for b, n in enumerate(lengths.tolist()):  # garbage in the padding must not leak
        x[b, n:] = 1e3 * torch.randn(21 - n, 160)
    with torch.no_grad():
        batch = model(x, lengths)
        bigger = model(torch.cat([x, torch.randn(5, 30, 160)], dim=1), lengths)
        assert torch.equal(batch.lengths, lengths)
        for b, n in enumerate(lengths.tolist()):
            alone = model(x[b : b + 1, :n])
            for out in (batch, bigger):
                assert (out.logits[b, :n] - alone.logits[0]).abs().max() <= 1e-5
                assert (out.mid_logits[b, :n] - alone.mid_logits[0]).abs().max() <= 1e-5
            assert torch.isfinite(batch.logits).all() and torch.isfinite(bigger.logits).all()


def test_padding_invariance_train_batchnorm_stats():
    """In training, BatchNorm statistics use valid frames only: extra padding changes nothing."""
    torch.manual_seed(4)
    model = CTCEncoder(_cfg(dropout=0.0), attn_impl="math").train()
    twin = CTCEncoder(model.config, attn_impl="math").train()
    twin.load_state_dict(model.state_dict())
    lengths = torch.tensor([13, 7])
    x = torch.randn(2, 13, 160)
    padded = torch.cat([x, 50 * torch.randn(2, 9, 160)], dim=1)
    a = model(x, lengths)
    b = twin(padded, lengths)
    for i, n in enumerate(lengths.tolist()):
        assert (a.logits[i, :n] - b.logits[i, :n]).abs().max() <= 1e-5
    for (k, va), vb in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-6), k
    bn = model.layers[0].conv.batch_norm
    assert int(bn.num_batches_tracked) == 1 and bn.running_var.ne(1).any()


def test_sdpa_and_math_gradients_agree(ref):
    x = torch.randn(2, 21, 160)
    lengths = torch.tensor([21, 12])
    grads = []
    for impl in ("math", "sdpa"):
        model = _ours(ref, impl)
        model(x, lengths).logits[1, :12].square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[1]["layers.0.attn.rel_pos_emb.weight"].abs().sum() > 0
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-5), n


@pytest.mark.parametrize("attn_impl", ["math", "sdpa"])
def test_checkpointing_gives_identical_gradients(attn_impl):
    torch.manual_seed(6)
    plain = CTCEncoder(_cfg(dropout=0.1), attn_impl=attn_impl).train()
    ckpt = CTCEncoder(plain.config, attn_impl=attn_impl, gradient_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 19, 160)
    lengths = torch.tensor([19, 10])
    for model in (plain, ckpt):
        torch.manual_seed(7)  # same dropout masks; checkpoint replays the RNG state
        out = model(x, lengths)
        (out.logits.square().mean() + out.mid_logits.square().mean()).backward()
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), n
    # BatchNorm running stats are updated once, not again on recomputation
    for (n, a), b in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.allclose(a.float(), b.float()), n


def test_bf16_autocast_cpu():
    torch.manual_seed(8)
    model = CTCEncoder(_cfg(), attn_impl="sdpa", gradient_checkpointing=True).train()
    x = torch.randn(2, 21, 160)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.tensor([21, 9]))
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.mid_logits).all()
    out.logits.float().logsumexp(-1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("context_size,max_pos_emb", [(8, 16), (8, 8), (200, 512)])
def test_shaw_bias_equals_reference_gather(context_size, max_pos_emb):
    """The one-GEMM relative shift gives the reference's bias values and gradients."""
    torch.manual_seed(9)
    table = torch.randn(2 * max_pos_emb + 1, 4, requires_grad=True)
    query = torch.randn(3, 2, context_size, 4, requires_grad=True)
    dists = attention_dists(context_size, max_pos_emb)
    ref_bias = torch.einsum("b h c d, c r d -> b h c r", query, table[dists])
    bias = shaw_bias(query, table, max_pos_emb)
    assert bias.shape == ref_bias.shape
    torch.testing.assert_close(bias, ref_bias, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(ref_bias)
    ref_grads = torch.autograd.grad((ref_bias * weights).sum(), [query, table])
    grads = torch.autograd.grad((bias * weights).sum(), [query, table])
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_bf16_sdpa_path_matches_math_path(ref):
    """Under bf16 autocast the sdpa path (shaw_bias, fp32 depthwise conv) is as close to fp32 as math."""
    x = torch.randn(2, 21, 160)
    lengths = torch.tensor([21, 12])

    def run(impl, autocast):
        model = _ours(ref, impl).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(x, lengths).logits.float()
        logits[1, :12].square().mean().backward()
        return logits, model.layers[0].attn.rel_pos_emb.weight.grad

    exact_logits, exact_grad = run("math", False)
    (math_logits, math_grad), (sdpa_logits, sdpa_grad) = run("math", True), run("sdpa", True)
    assert exact_grad.abs().sum() > 0
    math_err = (math_logits - exact_logits).abs().max()
    assert (sdpa_logits - exact_logits).abs().max() <= 2 * math_err
    math_err = (math_grad - exact_grad).abs().max()
    assert (sdpa_grad - exact_grad).abs().max() <= 2 * math_err


def test_bad_attn_impl():
    with pytest.raises(ValueError):
        CTCEncoder(_cfg(), attn_impl="flash")


def test_presets():
    with pytest.raises(KeyError):
        encoder_config("nope")
    tiny = encoder_config("tiny")
    assert (tiny.input_dim, tiny.output_dim) == (160, 348)
    assert 2 <= tiny.num_layers <= 4 and 64 <= tiny.hidden_dim <= 144
    model = CTCEncoder(tiny).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 7, 160))
    assert out.logits.shape == (1, 7, 348)


def test_full_config_param_count_matches_reference():
    cfg = encoder_config("granite_4_0_1b")
    assert (cfg.num_layers, cfg.hidden_dim, cfg.num_heads, cfg.dim_head) == (16, 1024, 8, 128)
    assert (cfg.feedforward_mult, cfg.conv_kernel_size, cfg.conv_expansion_factor) == (4, 15, 2)
    assert (cfg.context_size, cfg.max_pos_emb, cfg.dropout) == (200, 512, 0.1)
    with torch.device("meta"):
        ours = CTCEncoder(cfg)
        ref = GraniteSpeechCTCEncoder(cfg)
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in ref.parameters())
    assert 430e6 <= n_ours <= 445e6  # RECIPE: ~430-440M
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
