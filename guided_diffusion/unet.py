"""ADM UNet of OpenAI's guided-diffusion (Dhariwal & Nichol 2021), rebuilt so that its
state_dict matches the official checkpoints (``ffhq_10m.pt``, ``256x256_diffusion_uncond.pt``)
entry by entry, and ``create_model`` to build and load it from a model config."""
from __future__ import annotations

import logging
import math
import os
from contextlib import nullcontext
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _grad_checkpoint

log = logging.getLogger(__name__)

NUM_CLASSES = 1000

#: Where the official checkpoints are published, by file name.
OFFICIAL_CHECKPOINTS = {
    "ffhq_10m.pt": "https://drive.google.com/drive/folders/1jElnRoFv7b31fG0v6pTSQkelbSX3xGZh "
    "(DPS authors' Google Drive, linked from github.com/DPS2022/diffusion-posterior-sampling)",
    "256x256_diffusion_uncond.pt": "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
    "256x256_diffusion_uncond.pt (github.com/openai/guided-diffusion)",
}


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) computed in float32 whatever the input dtype (as in guided-diffusion).

    Input and output (N, C, ...) of the same dtype. A bfloat16 input on the CPU goes straight to
    PyTorch's mixed-type kernel (bf16 input, float32 weight and bias, statistics and affine map
    accumulated in float32, one rounding to bf16 at the end): the float32 round trip of the other
    devices to one bf16 rounding step (the float32 statistics are summed in another order, which
    flips a rounding in ~1e-4 of the elements; tests/test_unet.py), without the two full-size dtype
    copies per call that took ~14 % of a bf16 FFHQ forward at 256×256 (docs/speed.md). float32
    inputs take the plain float32 kernel, unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and self.weight.dtype == torch.float32:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """GroupNorm with 32 groups over ``channels`` channels."""
    return GroupNorm32(32, channels)


class NormSiLU(nn.SiLU):
    """SiLU, x·sigmoid(x), for the places where its input is a fresh GroupNorm output (never a
    tensor the caller holds): computed in place when autograd is off (sampling under
    ``torch.inference_mode`` / ``no_grad``), which spares a full-size allocation per call and
    gives the same values bit for bit; out of place when autograd records. (N, C, ...) -> same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.silu(x, inplace=not torch.is_grad_enabled())


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-D convolution; raises ValueError for other ``dims``."""
    if dims == 1:
        return nn.Conv1d(*args, **kwargs)
    if dims == 2:
        return nn.Conv2d(*args, **kwargs)
    if dims == 3:
        return nn.Conv3d(*args, **kwargs)
    raise ValueError(f"unsupported dimensions: {dims} (valid: 1, 2, 3)")


def zero_module(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` in place and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal timestep embedding (Vaswani et al. 2017; guided-diffusion ``nn.py``).

    Args:
        timesteps: (N,) tensor of (possibly fractional) timesteps.
        dim: embedding width.
        max_period: lowest frequency is 1 / max_period.
    Returns:
        (N, dim) float32 tensor ``[cos(t f_k), sin(t f_k)]`` with f_k = max_period^(-k / (dim/2)).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepBlock(nn.Module):
    """A module whose ``forward`` takes the timestep embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Sequential container that passes the embedding to the children that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # noqa: D102
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling, optionally followed by a 3×3 convolution.

    Input (N, C, H, W) -> output (N, out_channels, 2H, 2W)."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """×2 downsampling by a stride-2 3×3 convolution (``use_conv``) or 2×2 average pooling.

    Input (N, C, H, W) -> output (N, out_channels, H/2, W/2)."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("Downsample without conv cannot change the channel count")
            pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims]
            self.op = pool(kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding (ADM, Dhariwal & Nichol 2021, §3).

    With ``use_scale_shift_norm`` the embedding gives a scale and shift applied after the
    second GroupNorm (adaptive group normalisation); ``up`` / ``down`` resample inside the block.
    Input (N, channels, H, W), embedding (N, emb_channels) -> (N, out_channels, H', W')."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, dims: int = 2,
                 use_checkpoint: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), NormSiLU(),
                                       conv_nd(dims, channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), NormSiLU(), nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return _grad_checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        while emb_out.dim() < h.dim():
            emb_out = emb_out[..., None]
        # Without autograd, the fresh intermediates (GroupNorm and convolution outputs) are updated
        # in place: the same operations in the same order, so the same values bit for bit. The
        # skip sum only when both share a memory layout (out of place, ``skip + h`` takes skip's
        # layout, e.g. NCHW after an attention block, and the next convolutions run in it).
        in_place = not torch.is_grad_enabled()
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h)
            h = h.mul_(1 + scale).add_(shift) if in_place else h * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        skip = self.skip_connection(x)
        if in_place and skip.dtype == h.dtype and skip.shape == h.shape and skip.stride() == h.stride():
            return h.add_(skip)
        return skip + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions (ADM).

    ``use_new_attention_order`` splits qkv before the heads (``QKVAttention``), otherwise heads
    first (``QKVAttentionLegacy``, the order of the official checkpoints). Both compute
    softmax(q kᵀ / √d) v per head with d = channels / heads. Input and output (N, C, H, W)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = False, use_new_attention_order: bool = False):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.new_order = use_new_attention_order
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return _grad_checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _attention(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        heads = self.num_heads
        ch = width // (3 * heads)
        if self.new_order:
            q, k, v = (t.reshape(bs * heads, ch, length) for t in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(bs * heads, 3 * ch, length).split(ch, dim=1)
        # (B*heads, T, ch) layout for scaled_dot_product_attention; its default scale is 1/sqrt(ch).
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return a.transpose(1, 2).reshape(bs, heads * ch, length)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self._attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


class UNetModel(nn.Module):
    """The ADM UNet (Dhariwal & Nichol 2021) predicting ε (and, with learn_sigma, the
    variance interpolation v) from (x_t, t).

    Args:
        image_size: side of the square input.
        in_channels: image channels (3 for RGB, 1 for grayscale).
        model_channels: base width.
        out_channels: in_channels, or 2 × in_channels with a learned variance.
        num_res_blocks: residual blocks per resolution.
        attention_resolutions: downsampling rates (1, 2, 4, ...) at which to add attention.
        dropout, channel_mult, conv_resample, dims, num_classes, use_checkpoint, num_heads,
        num_head_channels, num_heads_upsample, use_scale_shift_norm, resblock_updown,
        use_new_attention_order: as in guided-diffusion.
        use_fp16: run the network under autocast to ``half_dtype`` (set by create_model; None:
            float16 on CUDA, bfloat16 on CPU); the parameters and the returned tensor stay float32.

    ``forward(x, timesteps, y=None)``: x (N, C, H, W), timesteps (N,) -> (N, out_channels, H, W).
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Iterable[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True, dims: int = 2,
                 num_classes: int | None = None, use_checkpoint: bool = False, use_fp16: bool = False,
                 num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.use_fp16 = use_fp16
        self.half_dtype: torch.dtype | None = None   # autocast dtype; None: float16 on CUDA, bfloat16 on CPU
        self.channels_last = False   # set by create_model when the weights are stored NHWC
        self.levels = len(channel_mult)   # resolutions (1 + downsamplings)
        attention_resolutions = set(attention_resolutions)
        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, time_embed_dim, dropout, out_channels=ch_out, dims=dims,
                            use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm, **kw)

        def attn(ch, heads):
            return AttentionBlock(ch, use_checkpoint=use_checkpoint, num_heads=heads,
                                  num_head_channels=num_head_channels, use_new_attention_order=use_new_attention_order)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))])
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, dims, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                input_block_chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [res(ch + ich, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, dims, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch), NormSiLU(),
                                 zero_module(conv_nd(dims, input_ch, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ε (and the variance channels) for x_t: (N, C, H, W) at timesteps (N,).

        Raises ValueError when ``y`` (class labels, (N,)) is given without class conditioning
        or missing with it."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("class labels y must be given if and only if the model is class-conditional")
        if self.use_fp16:
            dtype = self.half_dtype or (torch.float16 if x.device.type == "cuda" else torch.bfloat16)
            ctx = torch.autocast(device_type=x.device.type, dtype=dtype)
        else:
            ctx = nullcontext()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx:
            emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
            if self.num_classes is not None:
                emb = emb + self.label_emb(y)
            hs = []
            h = x
            for module in self.input_blocks:
                h = module(h, emb)
                hs.append(h)
            h = self.middle_block(h, emb)
            for module in self.output_blocks:
                h = module(torch.cat([h, hs.pop()], dim=1), emb)
            out = self.out(h)
        return out.float() if self.use_fp16 else out


def _parse_channel_mult(channel_mult, image_size: int) -> tuple:
    if channel_mult in ("", None):
        defaults = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                    64: (1, 2, 3, 4), 32: (1, 2, 2), 28: (1, 2, 2)}
        if image_size not in defaults:
            raise ValueError(f"model config: no default channel_mult for image_size {image_size}; "
                             f"set channel_mult (e.g. '1,2,2') or use one of {sorted(defaults)}")
        return defaults[image_size]
    if isinstance(channel_mult, str):
        return tuple(float(c) if "." in c else int(c) for c in channel_mult.split(","))
    return tuple(channel_mult)


def _parse_resolutions(attention_resolutions, image_size: int) -> list[int]:
    if attention_resolutions in ("", None):
        return []
    if isinstance(attention_resolutions, int):
        attention_resolutions = [attention_resolutions]
    elif isinstance(attention_resolutions, str):
        attention_resolutions = attention_resolutions.split(",")
    out = []
    for res in attention_resolutions:
        res = int(res)
        if res <= 0 or image_size % res:
            raise ValueError(f"model config: attention_resolutions entry {res} does not divide image_size {image_size}")
        out.append(image_size // res)
    return out


def load_state_dict_checked(model: nn.Module, path: str, device: str | torch.device = "cpu") -> None:
    """Load a state_dict checkpoint into ``model`` with strict key and shape checking.

    Uses ``torch.load(path, weights_only=True)``; a dict holding an ``"ema"`` or ``"state_dict"``
    entry is unwrapped. Raises FileNotFoundError naming the path (and where the official file is
    published), ValueError naming the first missing / unexpected / mis-shaped entry, or saying in
    one line why the file is not a weights-only checkpoint (without PyTorch's advice to retry
    with ``weights_only=False``, unsafe for a file of unknown origin)."""
    if os.path.isdir(path):
        raise ValueError(f"model_path {path!r} is a folder; expected a checkpoint file (.pt / .pth)")
    if not os.path.isfile(path):
        where = OFFICIAL_CHECKPOINTS.get(os.path.basename(path))
        hint = f"; download it from {where} and place it at {path}" if where else \
            "; set model.model_path to an existing checkpoint (see ckpts/README.md)"
        raise FileNotFoundError(f"model_path {path!r} does not exist{hint}")
    from util.files import load_checkpoint   # weights-only; one line for a truncated / corrupt / wrong-kind file
    state = load_checkpoint(path, "model_path", device)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path!r} does not match the model config: {len(missing)} missing entries "
            f"(first: {missing[0] if missing else None}), {len(unexpected)} unexpected "
            f"(first: {unexpected[0] if unexpected else None})")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"checkpoint {path!r}: entry {k} has shape {tuple(state[k].shape)}, "
                             f"the model config expects {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)


def create_model(image_size: int, num_channels: int, num_res_blocks: int, channel_mult="",
                 learn_sigma: bool = False, class_cond: bool = False, use_checkpoint: bool = False,
                 attention_resolutions="16", num_heads: int = 1, num_head_channels: int = -1,
                 num_heads_upsample: int = -1, use_scale_shift_norm: bool = False, dropout: float = 0.0,
                 resblock_updown: bool = False, use_fp16: bool | str = False, use_new_attention_order: bool = False,
                 model_path: str = "", in_channels: int = 3, device: str | torch.device = "cpu",
                 channels_last: bool | str = "auto", compile: bool | str = "auto", **unused) -> UNetModel:
    """Build the ADM UNet from guided-diffusion model-config keys and load ``model_path``.

    ``attention_resolutions`` are feature-map sides (e.g. "32,16,8" for a 256 model), converted
    to downsampling rates image_size // res. ``channel_mult`` "" takes the guided-diffusion default
    for the image size. ``model_path`` "" builds random weights (for tests and timing). The model
    is returned in eval mode on ``device``. Unknown keys raise ValueError (listing valid keys).
    ``use_fp16`` (``true``, ``false`` or ``"auto"``) runs the forward under autocast (CUDA: bfloat16
    where the GPU supports it, else float16; CPU: bfloat16; parameters, inputs and outputs stay
    float32); ``channels_last`` stores the weights and feeds the input in NHWC memory layout;
    ``compile`` wraps the model in ``torch.compile`` (inductor). ``auto`` is decided for the machine
    by :func:`guided_diffusion.precision.choose` (capabilities, a cached start-up probe, measured
    rules); the decisions and reasons are in the returned model's ``speed_settings`` dict.
    ``use_fp16`` defaults to false here (library callers and tests get fp32 numerics); a run's
    default is ``auto`` (:func:`builder.build_model` and the shipped configs).

    Raises: ValueError (bad key or value, checkpoint mismatch), FileNotFoundError (model_path).
    """
    arguments = dict(locals())
    if unused:
        valid = sorted(create_model.__code__.co_varnames[:create_model.__code__.co_argcount])
        raise ValueError(f"model config: unknown key(s) {sorted(unused)}; valid keys: {valid}")
    if in_channels <= 0:
        raise ValueError(f"model config: in_channels must be positive, got {in_channels}")
    model = UNetModel(
        image_size=image_size, in_channels=in_channels, model_channels=num_channels,
        out_channels=in_channels * (2 if learn_sigma else 1), num_res_blocks=num_res_blocks,
        attention_resolutions=_parse_resolutions(attention_resolutions, image_size), dropout=dropout,
        channel_mult=_parse_channel_mult(channel_mult, image_size),
        num_classes=NUM_CLASSES if class_cond else None, use_checkpoint=use_checkpoint, use_fp16=use_fp16,
        num_heads=num_heads, num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order)
    if model_path:
        load_state_dict_checked(model, model_path, device="cpu")
    from guided_diffusion.precision import choose
    model = model.to(device).eval()
    architecture = {k: v for k, v in arguments.items()
                    if k not in ("model_path", "use_fp16", "channels_last", "compile", "device", "unused")}
    settings = choose(model, architecture, use_fp16, channels_last, compile, device)
    if settings["compile"]:
        model = torch.compile(model)   # attribute reads reach the UNet through the wrapper
    model.speed_settings = settings
    return model


#: Device types on which :func:`resolve_channels_last` reads ``auto`` as on (NHWC: cuDNN's tensor
#: cores, oneDNN's fast convolutions). ``create_model`` itself decides ``auto`` by a start-up probe
#: (guided_diffusion/precision.py; the layout's gain depends on the machine and the UNet's size,
#: docs/speed.md).
CHANNELS_LAST_AUTO_DEVICES = ("cuda", "cpu")


def resolve_channels_last(setting: bool | str, device: str | torch.device) -> bool:
    """Whether to use the channels_last (NHWC) memory layout for a model on ``device``, without
    probing (main.py uses it to check the value early; ``create_model`` probes for ``auto``).

    Args:
        setting: True / False, or the strings "true", "false", "auto" (case-insensitive);
            "auto" is True on the device types of :data:`CHANNELS_LAST_AUTO_DEVICES`.
        device: the model's device.
    Raises:
        ValueError: any other setting.
    """
    if isinstance(setting, bool):
        return setting
    text = str(setting).strip().lower() if isinstance(setting, str) else None
    if text in ("true", "false"):
        return text == "true"
    if text == "auto":
        return torch.device(device).type in CHANNELS_LAST_AUTO_DEVICES
    raise ValueError(f"model config: channels_last must be true, false or auto, got {setting!r}")
