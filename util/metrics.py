"""Image quality metrics of a reconstruction against its reference: PSNR and SSIM
(scikit-image) on images mapped to [0, 1], and LPIPS (the ``lpips`` package, v0.1, on the VGG-16
or AlexNet backbone: ``metrics.lpips_net`` of the task config) when the backbone's torchvision
weights are already in the torch hub cache, so nothing ever downloads.

LPIPS-VGG is what the CoDPS paper's code (``util/compute_metric.py``: ``lpips.LPIPS(net='vgg')``),
DPS, DAPS and InverseBench report; the FFHQ and IMAGENET configs use it. AlexNet (lpips' own
default) stays the default elsewhere. The two give different numbers: compare only equal nets.

Two ways to map a model-scale image x in [-1, 1] to [0, 1]:

- ``"clip"`` (default): (x + 1) / 2 clipped to [0, 1].
- ``"minmax"``: every image stretched by its own min and max to [0, 1], as the paper's code does
  (``clear_color``) before PSNR and before saving PNGs; use it to compare with the paper's numbers.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

log = logging.getLogger(__name__)

METRIC_NORMS = ("clip", "minmax")

#: The smallest side LPIPS-AlexNet is run at; smaller images are upsampled (bilinear) to it.
LPIPS_MIN_SIDE = 64


def to_unit(x: torch.Tensor, norm: str = "clip") -> torch.Tensor:
    """Map model-scale images to [0, 1] for metrics and PNGs.

    Args:
        x: (N, C, H, W) or (C, H, W), nominally in [-1, 1].
        norm: "clip" ((x + 1) / 2 clipped) or "minmax" (each image stretched to [0, 1] by its own
            min and max; a constant image maps to 0).
    Returns:
        float32 tensor of the same shape in [0, 1] on the CPU.
    Raises:
        ValueError for another ``norm``.
    """
    x = x.detach().float().cpu()
    if norm == "clip":
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    if norm == "minmax":
        flat = x.reshape(x.shape[0], -1) if x.dim() == 4 else x.reshape(1, -1)
        lo = flat.min(dim=1).values
        span = (flat.max(dim=1).values - lo).clamp_min(1e-12)
        shape = (-1, 1, 1, 1) if x.dim() == 4 else (1, 1, 1)
        return ((x - lo.view(shape)) / span.view(shape)).clamp(0.0, 1.0)
    raise ValueError(f"unknown metric normalisation {norm!r}; valid: {', '.join(METRIC_NORMS)}")


def _hwc(img: torch.Tensor) -> np.ndarray:
    return img.numpy().transpose(1, 2, 0).astype(np.float64)


def psnr(x: torch.Tensor, ref: torch.Tensor, norm: str = "clip") -> list[float]:
    """PSNR in dB per image of ``x`` against ``ref``, both (N, C, H, W) in [-1, 1], computed on
    [0, 1] images (see :func:`to_unit`) with ``skimage.metrics.peak_signal_noise_ratio``
    (data_range 1). An identical pair gives inf."""
    xs, rs = to_unit(x, norm), to_unit(ref, norm)
    out = []
    for a, b in zip(xs, rs):
        with np.errstate(divide="ignore"):
            out.append(float(peak_signal_noise_ratio(_hwc(b), _hwc(a), data_range=1.0)))
    return out


def ssim(x: torch.Tensor, ref: torch.Tensor, norm: str = "clip") -> list[float]:
    """SSIM per image of ``x`` against ``ref``, both (N, C, H, W) in [-1, 1], on [0, 1] images with
    ``skimage.metrics.structural_similarity`` (data_range 1, 7x7 window, or the largest odd
    window that fits images smaller than 7 pixels; channels averaged)."""
    xs, rs = to_unit(x, norm), to_unit(ref, norm)
    side = min(xs.shape[-2:])
    win = 7 if side >= 7 else max(1, side - (1 - side % 2))
    out = []
    for a, b in zip(xs, rs):
        out.append(float(structural_similarity(_hwc(b), _hwc(a), data_range=1.0, channel_axis=-1, win_size=win)))
    return out


#: ``metrics.lpips_net`` values: the lpips backbone -> (torchvision builder, its weights enum name).
LPIPS_NETS = {"vgg": ("vgg16", "VGG16_Weights"), "alex": ("alexnet", "AlexNet_Weights")}
#: The backbone when a task config has no ``metrics.lpips_net`` (the FFHQ / IMAGENET configs set vgg).
DEFAULT_LPIPS_NET = "alex"


def lpips_weights_path(net: str = DEFAULT_LPIPS_NET) -> str:
    """Where torchvision keeps (and would download) the ImageNet weights of LPIPS backbone ``net``:
    ``<torch.hub.get_dir()>/checkpoints/vgg16-397923af.pth`` (vgg) or ``alexnet-owt-7be5be79.pth``
    (alex); ``$TORCH_HOME`` moves it. Raises ValueError for a ``net`` not in :data:`LPIPS_NETS`."""
    if net not in LPIPS_NETS:
        raise ValueError(f"metrics.lpips_net {net!r} is not an LPIPS backbone; valid: {', '.join(LPIPS_NETS)}")
    import torchvision.models as tvm
    name = os.path.basename(getattr(tvm, LPIPS_NETS[net][1]).IMAGENET1K_V1.url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def alexnet_weights_path() -> str:
    """:func:`lpips_weights_path` of AlexNet (``.../checkpoints/alexnet-owt-7be5be79.pth``)."""
    return lpips_weights_path("alex")


class LPIPSMetric:
    """LPIPS distance (lpips v0.1, backbone ``net``: "vgg" or "alex") per image, or nothing when
    the backbone weights are missing.

    The backbone comes from the torch hub cache only: when :func:`lpips_weights_path` does not
    exist, ``available`` is False, ``__call__`` returns None for every image, and one warning
    names the file and how to cache it. ``lpips.LPIPS`` is only constructed once the file is
    known to be there, so no download is ever attempted. The lpips linear-layer weights ship
    inside the package. ``net_name`` records the backbone (for summary.json).

    Raises ValueError for a ``net`` not in :data:`LPIPS_NETS`.
    """

    def __init__(self, device: str | torch.device = "cpu", net: str = DEFAULT_LPIPS_NET):
        self.device = torch.device(device)
        self.net = None
        self.net_name = net
        self.reason = ""
        path = lpips_weights_path(net)
        builder, weights = LPIPS_NETS[net]
        if not os.path.isfile(path):
            self.reason = (f"LPIPS column left empty: {builder} weights for LPIPS-{net} not found at {path}. "
                           f"To enable it, run once with network access: python -c \"import torchvision; "
                           f"torchvision.models.{builder}(weights='IMAGENET1K_V1')\" (or copy the file there)")
            log.warning(self.reason)
            return
        try:
            import lpips  # imported lazily: it is slow to import
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                self.net = lpips.LPIPS(net=net, verbose=False).to(self.device).eval()
        except (OSError, RuntimeError, ValueError, KeyError, ImportError) as exc:
            self.reason = f"LPIPS column left empty: could not set up LPIPS from {path}: {' '.join(str(exc).split())}"
            log.warning(self.reason)
            self.net = None

    @property
    def available(self) -> bool:
        """True when LPIPS values are computed."""
        return self.net is not None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, ref: torch.Tensor, norm: str = "clip") -> list[float | None]:
        """LPIPS per image of ``x`` against ``ref``, both (N, C, H, W) in [-1, 1].

        Images are normalised as for PSNR (:func:`to_unit`) and mapped back to [-1, 1]; one
        channel is repeated to three; images with a side under :data:`LPIPS_MIN_SIDE` are
        upsampled (bilinear) to it. Returns [None] * N when LPIPS is unavailable."""
        if self.net is None:
            return [None] * x.shape[0]
        a = to_unit(x, norm) * 2.0 - 1.0
        b = to_unit(ref, norm) * 2.0 - 1.0
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        side = min(a.shape[-2:])
        if side < LPIPS_MIN_SIDE:
            size = tuple(int(round(s * LPIPS_MIN_SIDE / side)) for s in a.shape[-2:])
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        d = self.net(a.to(self.device), b.to(self.device))
        return [float(v) for v in d.reshape(-1).cpu()]


def data_fit_residual(y: torch.Tensor, ax: torch.Tensor, sigma: float, observed: torch.Tensor) -> list[float | None]:
    """Per-image data-fit residual ‖y − A x̂‖ / (σ_n √m): ≈ 1 when the reconstruction explains
    the measurement up to noise of std σ_n, ≫ 1 when it does not fit, ≪ 1 when it fits the noise.

    Args:
        y: (N, ...) measurements on the [-1, 1] scale.
        ax: (N, ...) A x̂ of the reconstructions, same shape.
        sigma: σ_n, the noise std on the [-1, 1] scale (0: no normalisation possible).
        observed: (N, ...) or broadcastable boolean, the entries that are measured (m = their
            count per image; unmeasured entries, e.g. inpainting's missing pixels, are 0 in both).
    Returns:
        N floats; None for every image when ``sigma`` is 0, and for an image with no measured
        entry (m = 0: a residual 0 would read as a perfect fit).

    >>> data_fit_residual(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 0.5, torch.ones(1, 1, 2, 2) > 0)
    [2.0]
    """
    if sigma <= 0:
        return [None] * y.shape[0]
    diff = (y.double() - ax.double()) * observed
    sq = diff.reshape(y.shape[0], -1).pow(2).sum(dim=1)
    m = torch.broadcast_to(observed, y.shape).reshape(y.shape[0], -1).sum(dim=1).double()
    values = torch.sqrt(sq / m.clamp_min(1)) / sigma
    return [None if int(k) == 0 else float(v) for v, k in zip(values, m)]   # nothing measured: no fit to report


#: Keys of a task config's optional ``metrics`` section and what each accepts.
METRICS_KEYS = {"lpips_net": tuple(LPIPS_NETS)}


def metrics_options(section: Any, where: str = "task config") -> dict:
    """The task config's ``metrics`` section, checked, with defaults: {"lpips_net": "vgg" | "alex"}.

    Args:
        section: ``task["metrics"]`` (a mapping, or None when the config has none).
        where: how the config is named in the error message.
    Raises:
        ValueError (one line) for a section that is not a mapping, an unknown key or a value
        outside :data:`METRICS_KEYS`.

    >>> metrics_options({"lpips_net": "vgg"})
    {'lpips_net': 'vgg'}
    """
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ValueError(f"{where}: metrics must be a mapping like {{lpips_net: vgg}}, got {section!r}")
    unknown = sorted(set(section) - set(METRICS_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) metrics.{', metrics.'.join(unknown)}; valid keys: "
                         f"{', '.join(METRICS_KEYS)}")
    out = {"lpips_net": section.get("lpips_net", DEFAULT_LPIPS_NET)}
    for key, valid in METRICS_KEYS.items():
        if out[key] not in valid:
            raise ValueError(f"{where}: metrics.{key} {out[key]!r} is not valid; valid: {', '.join(valid)}")
    return out
