"""Transforms: the reference fixture (both antialias settings) and hand-derived geometry."""

from __future__ import annotations

import pytest
import torch

from lavila.conformance.transforms import check_transforms
from lavila.models import MODEL_CONFIGS, get_config, model_transforms
from lavila.models.transforms import (
    IMAGENET_MEAN,
    OPENAI_MEAN,
    OPENAI_STD,
    Normalize,
    center_crop,
    eval_transform,
    random_resized_crop_params,
    resize,
    resized_size,
    train_transform,
    uniform_crop,
)
from tests.conftest import reference_file


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(reference_file("video_transforms_public.pt"), weights_only=False)


def test_fixture_conformance_both_antialias_settings():
    checks = check_transforms(reference_file("video_transforms_public.pt"))
    names = {c.check for c in checks}
    assert {"single_view_antialias_False", "single_view_antialias_True"} <= names
    assert {"multi_view_3crops_clip4_antialias_False", "multi_view_3crops_clip4_antialias_True"} <= names
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_antialias_matters_on_the_fixture(fixture):
    f, c = fixture["frames_THWC_0_255"], fixture["crop_size"]
    no_aa = eval_transform(c, fixture["mean_openai"], fixture["std_openai"], antialias=False)(f)
    assert torch.allclose(no_aa, fixture["single_view_antialias_False"], atol=1e-5)
    assert not torch.allclose(no_aa, fixture["single_view_antialias_True"], atol=1e-3)


def test_uint8_path_normalised_on_device_is_close_to_the_float_path(fixture):
    f, c = fixture["frames_THWC_0_255"], fixture["crop_size"]
    u8 = eval_transform(c, normalize=False)(f.to(torch.uint8))
    assert u8.dtype == torch.uint8 and u8.shape == (3, 8, c, c)
    out = Normalize(fixture["mean_openai"], fixture["std_openai"])(u8)
    # rounding the resized pixels to uint8 moves them by <= 0.5 grey levels: <= 0.5 / min(std) after normalising
    assert (out - fixture["single_view_antialias_False"]).abs().max() <= 0.5 / min(OPENAI_STD) + 1e-6


def test_normalization_constants_and_crop_sizes_come_from_the_row():
    row = get_config("CLIP_OPENAI_TIMESFORMER_BASE")
    mean, std = row.preprocess.mean, row.preprocess.std
    assert mean[0] == pytest.approx(0.48145466 * 225)  # the red channel was scaled by 225, not 255
    assert mean[1] == pytest.approx(0.4578275 * 255) and std[2] == pytest.approx(0.27577711 * 255)
    assert get_config("CLIP_HF_TIMESFORMER_DISTILBERT_BASE").preprocess.mean == IMAGENET_MEAN
    assert get_config("CLIP_OPENAI_TIMESFORMER_LARGE_336PX_DISTILBERT_BASE").vision.img_size == 336
    assert row.vision.img_size == 224
    # every OpenAI-initialised row normalises with CLIP's statistics, the others with ImageNet's
    for name, cfg in MODEL_CONFIGS.items():
        assert cfg.preprocess.mean == (OPENAI_MEAN if cfg.pretrained_vision else IMAGENET_MEAN), name


def test_model_transforms_resize_uint8_frames_in_float(fixture):
    """The row's eval transform gives the float-path numbers also for uint8 frames (no rounding after resize)."""
    f = fixture["frames_THWC_0_255"].round().to(torch.uint8)
    row = get_config("CLIP_OPENAI_TIMESFORMER_BASE", img_size=fixture["crop_size"])
    _, ev = model_transforms(row)
    expected = eval_transform(fixture["crop_size"], row.preprocess.mean, row.preprocess.std)(f.float())
    assert torch.equal(ev(f), expected)


def test_resize_rule_and_crop_offsets_hand_derived():
    assert resized_size(40, 60, 32) == (32, 48)
    assert resized_size(62, 40, 32) == (int(32 * 62 / 40), 32) == (49, 32)
    video = torch.arange(49.0).view(1, 1, 1, 49).expand(3, 2, 32, 49)
    # 49 - 32 = 17: CenterCrop offset round(8.5) = 8 (half to even); uniform_crop offset ceil(8.5) = 9
    assert center_crop(video, 32)[0, 0, 0, 0].item() == 8.0
    assert center_crop(video, 5)[0, 0, 0, 0].item() == 22.0  # round(44/2) = 22
    assert uniform_crop(video, 32, 1)[0, 0, 0, 0].item() == 9.0
    assert uniform_crop(video, 32, 0)[0, 0, 0, 0].item() == 0.0
    assert uniform_crop(video, 32, 2)[0, 0, 0, -1].item() == 48.0


def test_resize_of_uint8_rounds_and_keeps_dtype():
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    y = resize(x, (1, 4))
    assert y.dtype == torch.uint8 and y.flatten().tolist() == [0, 64, 191, 255]  # 63.75 -> 64, 191.25 -> 191


def test_multi_view_order_is_temporal_major_left_centre_right():
    frames = torch.arange(60.0).view(1, 1, 60, 1).expand(8, 32, 60, 3)  # column index as the pixel value
    views = eval_transform(32, (0, 0, 0), (1, 1, 1), num_crops=3, clip_length=4)(frames.clone())
    assert len(views) == 6 and views[0].shape == (3, 4, 32, 32)
    firsts = [v[0, 0, 0, 0].item() for v in views]
    assert firsts == [0.0, 14.0, 28.0] * 2  # ceil((60-32)/2) = 14 and 60-32 = 28, for both temporal clips
    portrait = eval_transform(32, (0, 0, 0), (1, 1, 1), num_crops=3, clip_length=8)(frames.transpose(1, 2).clone())
    assert [v[0, 0, 0, 0].item() for v in portrait] == [0.0, 14.0, 28.0]  # first row of top/centre/bottom crops


def test_classification_eval_crops_are_identical_after_centre_crop_first():
    frames = torch.rand(8, 40, 60, 3) * 255
    views = eval_transform(32, OPENAI_MEAN, OPENAI_STD, num_crops=3, clip_length=8, center_crop_first=True)(frames)
    assert torch.equal(views[0], views[1]) and torch.equal(views[1], views[2])


def test_random_resized_crop_fallback_hand_derived():
    # 2 x 200 image: every draw needs a crop taller than 2 px, so the central fallback runs:
    # ratio 100 > 4/3 -> h = 2, w = round(2 * 4/3) = 3, top 0, left (200 - 3) // 2 = 98.
    assert random_resized_crop_params(2, 200, generator=torch.Generator().manual_seed(0)) == (0, 98, 2, 3)
    # 200 x 2: ratio 0.01 < 3/4 -> w = 2, h = round(2 / 0.75) = 3, top (200 - 3) // 2 = 98
    assert random_resized_crop_params(200, 2) == (98, 0, 3, 2)


def test_random_resized_crop_draws_respect_scale_and_ratio():
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        top, left, h, w = random_resized_crop_params(90, 160, generator=g)
        assert 0 <= top <= 90 - h and 0 <= left <= 160 - w
        assert 0.45 <= h * w / (90 * 160) <= 1.0 and 0.7 <= w / h <= 1.4


def test_train_transform_one_crop_for_all_frames_and_flip():
    frames = torch.arange(60.0).view(1, 1, 60, 1).expand(4, 40, 60, 3).clone()
    frames += torch.arange(4.0).view(4, 1, 1, 1) * 1000  # frames differ only by an offset
    out = train_transform(16, (0, 0, 0), (1, 1, 1), generator=torch.Generator().manual_seed(0))(frames)
    assert out.shape == (3, 4, 16, 16)
    diffs = out[:, 1:] - out[:, :1]
    assert torch.allclose(diffs, torch.arange(1.0, 4.0).view(1, 3, 1, 1).expand_as(diffs) * 1000)
    a = train_transform(16, generator=torch.Generator().manual_seed(5), hflip=True)(frames)
    b = train_transform(16, generator=torch.Generator().manual_seed(5), hflip=True)(frames)
    assert torch.equal(a, b)
    flips = set()
    for seed in range(12):
        v = train_transform(16, (0, 0, 0), (1, 1, 1), hflip=True, generator=torch.Generator().manual_seed(seed))(frames)
        flips.add(bool(v[0, 0, 0, 0] > v[0, 0, 0, -1]))  # column ramp decreasing = flipped
    assert flips == {True, False}
