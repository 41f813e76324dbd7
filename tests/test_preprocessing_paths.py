"""Every verb feeds a model what its training data loader fed it: one transform (the row's), floats before resize.

The same decoded clip goes through the dataset path (training / evaluation), ``lavila narrate`` (metadata mode and
video mode), ``lavila eval-narrator`` (which narrates through the metadata-mode dataset) and ``lavila index``; the
tensors that would reach ``encode_image`` must be identical.
"""

from __future__ import annotations

import shutil

import torch

from lavila.data.benchmarks import SegmentDataset, SegmentSampling, VideoSegment
from lavila.data.datasets import Ego4DClipDataset
from lavila.data.decode import open_video
from lavila.models import create_model, model_transforms
from lavila.narrate import narrate as nar
from lavila.narrate.tiny import create_tiny_narrator

BLENDER = "mixkit-chef-preparing-a-sauce-in-a-blender-43034-medium"
DUAL = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, num_frames=4,
            text_width=32, text_layers=1, text_heads=2, embed_dim=16)


def test_same_clip_gives_identical_model_inputs_on_every_path(tmp_path, media_dir):
    (tmp_path / f"{BLENDER}.mp4").symlink_to(media_dir / f"{BLENDER}.mp4")
    narrator, _ = create_tiny_narrator()
    dual = create_model("CLIP_OPENAI_TIMESFORMER_BASE", **DUAL)
    assert narrator.config.preprocess == dual.config.preprocess and narrator.config.vision.img_size == 32

    reader = open_video(tmp_path / f"{BLENDER}.mp4")
    fps = reader.fps
    window = nar.sliding_windows(len(reader), fps, 2.0, 2.0, 4)[0]
    start, end = window.start, window.end
    row = (BLENDER, start, end, "#C C pours the sauce")
    loader = {"chunk_len": -1, "fps": -1}

    # training/evaluation dataset path (float frames -> the row's eval transform)
    dataset = Ego4DClipDataset(tmp_path, [row], transform=model_transforms(dual)[1], tokenizer=lambda t: torch.zeros(
        4, dtype=torch.long), clip_length=4, is_training=False, chunk_len=-1, fps=-1)
    reference = dataset[0][0]
    assert reference.dtype == torch.float32 and reference.shape == (3, 4, 32, 32)
    # lavila narrate, metadata mode; lavila eval-narrator builds exactly this dataset (lavila.narrate.nlg)
    _, meta_mode, error = nar.ClipDataset([row], [0], str(tmp_path), nar.clip_transform(narrator), 4, **loader)[0]
    assert error is None
    # lavila narrate, video mode: the window's frames through the same transform
    video_mode = nar.clip_transform(narrator)(reader.get_frames(window.frame_ids)).float()
    # lavila index: benchmark-style segment dataset with the row's transform
    seg = SegmentDataset(tmp_path, [VideoSegment(f"{BLENDER}.mp4", start, end, "action")], SegmentSampling(4),
                         model_transforms(dual.config)[1])
    index_input = seg[0]["frames"]
    index_input = index_input[0] if index_input.dim() == 5 else index_input  # [views, 3, T, H, W] -> the one view
    for name, got in (("narrate (metadata) / eval-narrator", meta_mode), ("narrate (video)", video_mode),
                      ("index", index_input)):
        assert torch.equal(got, reference), f"{name}: max diff {(got - reference).abs().max().item()}"

    # and those are the float-path numbers: resizing uint8 and rounding back (the old verb path) is not
    from lavila.models.transforms import eval_transform

    p = dual.config.preprocess
    old = eval_transform(32, p.mean, p.std, normalize=False)(reader.get_frames(window.frame_ids))
    old = (old.float() - torch.tensor(p.mean).view(3, 1, 1, 1)) / torch.tensor(p.std).view(3, 1, 1, 1)
    assert not torch.equal(old, reference)
    shutil.rmtree(tmp_path, ignore_errors=True)
