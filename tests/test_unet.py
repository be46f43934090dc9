"""The UNet's state_dict equals the official checkpoints' entry by entry, and loading is strict."""
import hashlib
import os

import pytest
import torch

from guided_diffusion.unet import create_model, timestep_embedding

HERE = os.path.dirname(__file__)

FFHQ = dict(image_size=256, num_channels=128, num_res_blocks=1, channel_mult="", learn_sigma=True,
            class_cond=False, use_checkpoint=False, attention_resolutions="16", num_heads=4,
            num_head_channels=64, num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
            resblock_updown=True, use_fp16=False, use_new_attention_order=False)
IMAGENET = dict(FFHQ, num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8")

# Facts of the official checkpoints (shared/reference), embedded: entry count, parameter count,
# and the sha256 of the "name (shape)" lines in state_dict order.
FACTS = {
    "ffhq": (FFHQ, 362, 93_563_910, "unet_ffhq_state_dict.txt"),
    "imagenet": (IMAGENET, 566, 552_814_086, "unet_imagenet_state_dict.txt"),
}
SHA256 = {
    "ffhq": "e047b3461e64590e6bde3376923cd352b5736f821b280008e99905c79c2644b0",
    "imagenet": "99b0f51e19c0f48559ffcaead639281ac95de54fa82e0bb6dc03a52a58962ac2",
}


def _lines(model):
    return [f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", sorted(FACTS))
def test_state_dict_matches_official_checkpoint(name):
    cfg, n_tensors, n_params, ref_file = FACTS[name]
    with torch.device("meta"):
        model = create_model(**cfg, device="meta")
    lines = _lines(model)
    assert len(lines) == n_tensors
    assert sum(v.numel() for v in model.state_dict().values()) == n_params
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == SHA256[name]
    with open(os.path.join(HERE, "data", ref_file)) as f:
        ref = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    for i, (ours, theirs) in enumerate(zip(lines, ref)):
        assert ours == theirs, f"entry {i}: ours {ours!r} != official {theirs!r}"
    assert len(ref) == n_tensors


def _tiny(**kw):
    cfg = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", learn_sigma=True,
               attention_resolutions="8", num_head_channels=16, use_scale_shift_norm=True,
               resblock_updown=True, in_channels=1)
    cfg.update(kw)
    return create_model(**cfg)


def test_strict_loading_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    a = _tiny()
    for p in a.parameters():
        p.data.normal_()
    path = tmp_path / "w.pt"
    torch.save(a.state_dict(), path)
    b = _tiny(model_path=str(path))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(a(x, t), b(x, t))
        assert a(x, t).shape == (2, 2, 16, 16)
    with pytest.raises(FileNotFoundError, match="ffhq_10m.pt.*drive.google"):
        _tiny(model_path=str(tmp_path / "ffhq_10m.pt"))
    with pytest.raises(ValueError, match="missing entries .first: input_blocks"):
        _tiny(model_path=str(path), channel_mult="1,2,2")
    with pytest.raises(ValueError, match="unknown key"):
        _tiny(bogus=1)


def test_timestep_embedding_closed_form():
    emb = timestep_embedding(torch.tensor([0.0, 5.0]), 4)
    freqs = torch.tensor([1.0, 10000 ** -0.5])
    ref = torch.cat([torch.cos(5.0 * freqs), torch.sin(5.0 * freqs)])
    assert torch.allclose(emb[1], ref, atol=1e-6)
    assert torch.equal(emb[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_batch_independence_and_new_attention_order():
    torch.manual_seed(0)
    for order in (False, True):
        m = _tiny(use_new_attention_order=order)
        for p in m.parameters():
            p.data.normal_(0, 0.2)
        x, t = torch.randn(3, 1, 16, 16), torch.tensor([1, 400, 999])
        with torch.no_grad():
            full = m(x, t)
            single = torch.cat([m(x[i:i + 1], t[i:i + 1]) for i in range(3)])
        assert torch.allclose(full, single, atol=1e-5)


@pytest.mark.parametrize("shape,channels_last", [((2, 64, 12, 12), True), ((2, 64, 12, 12), False),
                                                 ((1, 96, 40), False)])
def test_group_norm_bf16_cpu_matches_float32_round_trip(shape, channels_last):
    """GroupNorm32 on a bf16 CPU input (the mixed-type kernel, no float32 copies) gives the float32
    round trip of guided-diffusion to one bf16 rounding step (float32 statistics summed in another
    order flip a rounding now and then), keeps the dtype and layout, and fp32 inputs are unchanged."""
    from guided_diffusion.unet import GroupNorm32
    g = torch.Generator().manual_seed(0)
    norm = GroupNorm32(32, shape[1])
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
    x32 = torch.randn(shape, generator=g) * 3 + 1
    if channels_last:
        x32 = x32.contiguous(memory_format=torch.channels_last)
    x = x32.to(torch.bfloat16)
    with torch.no_grad():
        out = norm(x)
        ref = torch.nn.functional.group_norm(x.float(), 32, norm.weight, norm.bias, norm.eps).to(torch.bfloat16)
        assert out.dtype == torch.bfloat16
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        torch.testing.assert_close(out.float(), ref.float(), rtol=2 ** -7, atol=1e-6)
        assert (out != ref).float().mean() < 1e-2
        assert torch.equal(norm(x32), torch.nn.functional.group_norm(x32, 32, norm.weight, norm.bias, norm.eps))


@pytest.mark.parametrize("channels_last", [False, True])
def test_in_place_inference_path_equals_the_autograd_path(channels_last):
    """Without autograd, ResBlocks update their fresh intermediates in place (SiLU after GroupNorm,
    scale-shift, skip sum): the output equals the out-of-place forward of autograd bit for bit in
    float32, in either memory layout, and the caller's input is left as it was."""
    from guided_diffusion.precision import set_mode
    torch.manual_seed(0)
    m = _tiny(use_scale_shift_norm=True)
    for p in m.parameters():
        p.data.normal_(0, 0.2)
    set_mode(m, "fp32", channels_last)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 700])
    x_copy = x.clone()
    with torch.inference_mode():
        fast = m(x, t)
    with torch.enable_grad():
        ref = m(x.requires_grad_(True), t)
    assert torch.equal(fast, ref.detach())
    assert torch.equal(x.detach(), x_copy)
    m2 = _tiny(use_scale_shift_norm=False)
    for p in m2.parameters():
        p.data.normal_(0, 0.2)
    with torch.no_grad():
        fast = m2(x_copy, t)
    assert torch.equal(fast, m2(x_copy, t).detach())
