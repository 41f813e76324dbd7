"""Video transforms in plain torch, numerically equal to the reference's torchvision pipelines (spec §4).

Clips arrive as `[T,H,W,3]` (uint8 from the decoder, or float 0..255) and leave as `[3,T,crop,crop]`. Pixel values
stay on the 0..255 scale; normalisation uses the reference constants on that scale (including the OpenAI red-channel
mean scaled by 225 instead of 255, which the released checkpoints were trained with).

Matching torchvision without depending on it:
* Resize = `F.interpolate(bilinear, align_corners=False)` with an explicit `antialias` flag. The reference's
  torchvision 0.11 did not antialias tensors (`antialias=False`, the default here); torchvision >= 0.17 does.
* CenterCrop offsets are `int(round((dim - crop) / 2))` (Python's half-to-even round, torchvision's rule);
  SpatialCrop's `uniform_crop` uses `ceil((dim - crop) / 2)` (the reference's own rule). They differ by one pixel
  when `dim - crop` is odd.
* RandomResizedCrop follows torchvision's `get_params`: 10 tries of (area, log-ratio) draws, then the central
  fallback; one crop box for all frames.

`normalize=False` pipelines return uint8 `[3,T,crop,crop]` so a DataLoader moves 4x fewer bytes; apply
:class:`Normalize` on the model's device. The resize then rounds to uint8 before normalising (max deviation 0.5 grey
levels, ≈0.008 in normalised units) — use the float path for exact reference numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lavila.models.config import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD


# ------------------------------------------------------------------------------------------------------ functional
def to_cthw(frames: torch.Tensor) -> torch.Tensor:
    """`[T,H,W,3]` -> `[3,T,H,W]` (a view; the reference's `Permute([3,0,1,2])`)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T,H,W,3], got shape {tuple(frames.shape)}")
    return frames.permute(3, 0, 1, 2)


def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """Short side -> size, long side `int(size * long / short)` (torchvision's int-size Resize)."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def resize(video: torch.Tensor, size: int | tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bilinear resize of the last two dims. An int resizes the short side; uint8 input is rounded back to uint8."""
    h, w = video.shape[-2:]
    oh, ow = resized_size(h, w, size) if isinstance(size, int) else size
    if (oh, ow) == (h, w):
        return video
    lead = video.shape[:-2]
    x = video.reshape(-1, 1, h, w)
    x = x.float() if not x.is_floating_point() else x
    y = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False, antialias=antialias)
    if not video.is_floating_point():
        y = y.round_().clamp_(0, 255).to(video.dtype)
    return y.reshape(*lead, oh, ow)


def center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's CenterCrop on `[..., H, W]`: offsets `int(round((dim - size) / 2))`, zero-pad if too small."""
    h, w = video.shape[-2:]
    if size > h or size > w:
        pad_w, pad_h = max(size - w, 0), max(size - h, 0)
        video = F.pad(video, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        h, w = video.shape[-2:]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return video[..., top : top + size, left : left + size]


def uniform_crop(video: torch.Tensor, size: int, spatial_idx: int) -> torch.Tensor:
    """The reference's `uniform_crop` on `[C,T,H,W]`: 0/1/2 = left/centre/right (top/centre/bottom if portrait)."""
    if spatial_idx not in (0, 1, 2):
        raise ValueError(f"spatial_idx must be 0, 1 or 2, got {spatial_idx}")
    h, w = video.shape[-2:]
    y = int(math.ceil((h - size) / 2))
    x = int(math.ceil((w - size) / 2))
    if h > w:
        y = {0: 0, 1: y, 2: h - size}[spatial_idx]
    else:
        x = {0: 0, 1: x, 2: w - size}[spatial_idx]
    return video[..., y : y + size, x : x + size]


def normalize(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel `(x - mean) / std` on dim 0 of `[3,T,H,W]` (or dim -4 of a batch), in float32."""
    x = video.float() if not video.is_floating_point() else video
    shape = (-1, 1, 1, 1)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


def random_resized_crop_params(
    h: int,
    w: int,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) exactly as torchvision's `RandomResizedCrop.get_params` draws them."""
    area = h * w
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, w - cw + 1, size=(1,), generator=generator).item())
            return top, left, ch, cw
    in_ratio = float(w) / float(h)  # fallback: central crop at the nearest allowed ratio
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


# ------------------------------------------------------------------------------------------------------ modules
class ToCTHW(nn.Module):
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return to_cthw(frames)


class ToFloat(nn.Module):
    """uint8 -> float32 on the 0..255 scale, so the resize that follows computes the reference's (float) numbers."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video if video.is_floating_point() else video.float()


class Resize(nn.Module):
    def __init__(self, size: int, antialias: bool = False) -> None:
        super().__init__()
        self.size, self.antialias = size, antialias

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return resize(video, self.size, self.antialias)


class CenterCrop(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return center_crop(video, self.size)


class Normalize(nn.Module):
    """Normalisation as a module with buffers, so it moves to the model's device with `.to(device)`.

    Accepts uint8 or float `[3,T,H,W]` or a batch `[B,3,T,H,W]`, returns float32.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1, 1), persistent=False)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = video.float() if not video.is_floating_point() else video
        return (x - self.mean) / self.std


class TemporalCrop(nn.Module):
    """`[C,T,H,W]` -> list of `[C,frames,H,W]` windows starting every `stride` frames (reference semantics)."""

    def __init__(self, frames_per_clip: int = 8, stride: int = 8, frame_stride: int = 1) -> None:
        super().__init__()
        self.frames, self.stride, self.frame_stride = frames_per_clip, stride, frame_stride

    def forward(self, video: torch.Tensor) -> list[torch.Tensor]:
        span = self.frames * self.frame_stride
        return [video[:, s : s + span : self.frame_stride] for s in range(0, video.shape[1] - span + 1, self.stride)]


class SpatialCrop(nn.Module):
    """List of clips -> list of crops, clip-major: 1 = centre, 3 = left/centre/right, 6 = those 3 + 3 of the hflip."""

    def __init__(self, crop_size: int = 224, num_crops: int = 3) -> None:
        super().__init__()
        if num_crops not in (1, 3, 6):
            raise ValueError(f"num_crops must be 1, 3 or 6, got {num_crops}")
        self.crop_size = crop_size
        self.crops = [1] if num_crops == 1 else [0, 1, 2]
        self.flipped = num_crops == 6

    def forward(self, videos: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for video in videos:
            out.extend(uniform_crop(video, self.crop_size, i) for i in self.crops)
            if self.flipped:
                flipped = video.flip(-1)
                out.extend(uniform_crop(flipped, self.crop_size, i) for i in self.crops)
        return out


class RandomResizedCrop(nn.Module):
    """torchvision's RandomResizedCrop with one box shared by all frames of the clip."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        antialias: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.size, self.scale, self.ratio, self.antialias, self.generator = size, scale, ratio, antialias, generator

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        h, w = video.shape[-2:]
        top, left, ch, cw = random_resized_crop_params(h, w, self.scale, self.ratio, self.generator)
        crop = video[..., top : top + ch, left : left + cw]
        return resize(crop, (self.size, self.size), self.antialias)


class RandomHorizontalFlip(nn.Module):
    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if torch.rand(1, generator=self.generator).item() < self.p:
            return video.flip(-1)
        return video


class VideoTransform(nn.Sequential):
    """A pipeline; `nn.Sequential` so it prints its steps and can hold buffers (Normalize) like any module."""


class StackViews(nn.Module):
    """List of views -> one `[V,3,T,H,W]` tensor (how the fixture stores multi-view output; batches cleanly)."""

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(views, dim=0)


# ------------------------------------------------------------------------------------------------------ pipelines
def eval_transform(
    crop: int,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
    *,
    antialias: bool = False,
    num_clips: int = 1,
    num_crops: int = 1,
    clip_length: int | None = None,
    center_crop_first: bool = False,
    normalize: bool = True,
    stack_views: bool = False,
) -> VideoTransform:
    """The reference's evaluation pipelines.

    Single view (num_clips == num_crops == 1): Resize(crop) -> CenterCrop(crop) -> Normalize, `[3,T,crop,crop]`.
    Multi view: Resize -> [CenterCrop if `center_crop_first`, the classification fine-tune variant whose 3 crops
    are then identical] -> Normalize -> TemporalCrop(clip_length, stride clip_length) -> SpatialCrop(num_crops),
    a list of `[3,clip_length,crop,crop]` ordered clip-major (or one `[V,...]` tensor with `stack_views`).
    """
    steps: list[nn.Module] = [ToCTHW(), *([ToFloat()] if normalize else []), Resize(crop, antialias)]
    if num_clips == 1 and num_crops == 1:
        steps.append(CenterCrop(crop))
        if normalize:
            steps.append(Normalize(mean, std))
        return VideoTransform(*steps)
    if clip_length is None:
        raise ValueError("eval_transform: multi-view evaluation needs clip_length (frames per temporal view)")
    if center_crop_first:
        steps.append(CenterCrop(crop))
    if normalize:
        steps.append(Normalize(mean, std))
    steps += [TemporalCrop(clip_length, clip_length), SpatialCrop(crop, num_crops)]
    if stack_views:
        steps.append(StackViews())
    return VideoTransform(*steps)


def train_transform(
    crop: int,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
    *,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    hflip: bool = False,
    antialias: bool = False,
    normalize: bool = True,
    generator: torch.Generator | None = None,
) -> VideoTransform:
    """Pre-training / retrieval fine-tune: RandomResizedCrop(crop, scale) [-> RandomHorizontalFlip] -> Normalize.

    `hflip=True` is the classification fine-tune pipeline. Draws use torch's RNG (seeded per DataLoader worker by
    torch, unlike the reference's numpy jitter) or `generator` when given.
    """
    steps: list[nn.Module] = [ToCTHW(), *([ToFloat()] if normalize else []),
                              RandomResizedCrop(crop, scale, ratio, antialias, generator)]
    if hflip:
        steps.append(RandomHorizontalFlip(0.5, generator))
    if normalize:
        steps.append(Normalize(mean, std))
    return VideoTransform(*steps)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "CenterCrop",
    "Normalize",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "SpatialCrop",
    "StackViews",
    "TemporalCrop",
    "ToCTHW",
    "ToFloat",
    "VideoTransform",
    "center_crop",
    "eval_transform",
    "normalize",
    "random_resized_crop_params",
    "resize",
    "resized_size",
    "to_cthw",
    "train_transform",
]
