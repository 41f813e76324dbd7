"""Conformance of frame sampling: sections `get_frame_ids` and `chunked_video_loader` of `metrics_*.json`.

Frame indices must match exactly (tolerance 0); the error is the number of differing ids / reads. The chunked
loader runs against a fake decoder built from the case's own `chunk_lengths_frames`, which logs every
`[chunk_start_second, frame_index]` read, as the reference's fixture generator did.
"""

from __future__ import annotations

import torch

from lavila.conformance import Check
from lavila.data.decode import MissingVideoError
from lavila.data.sampling import chunk_path, get_frame_ids, video_loader


def _list_diff(ours: list, expected: list) -> int:
    """Positions that differ, counting a length mismatch as that many differences."""
    return sum(1 for a, b in zip(ours, expected) if a != b) + abs(len(ours) - len(expected))


def check_get_frame_ids(fixture_name: str, section: list) -> list[Check]:
    checks = []
    for i, case in enumerate(section):
        ids = get_frame_ids(
            case["start_frame"], case["end_frame"], case["num_segments"], jitter=bool(case.get("jitter", False))
        )
        checks.append(Check.compare(fixture_name, f"get_frame_ids[{i}]", _list_diff(ids, case["frame_ids"]), 0))
    return checks


class _LoggedChunk:
    """A fake chunk whose frame k is a 1x1 pixel encoding (chunk index, k), logging what is read."""

    fps = 30.0

    def __init__(self, start: int, num_frames: int, log: list, chunk_no: int) -> None:
        self.start, self.num_frames, self.log, self.chunk_no = start, num_frames, log, chunk_no

    def __len__(self) -> int:
        return self.num_frames

    def get_frames(self, ids) -> torch.Tensor:
        ids = [int(i) for i in ids]
        if any(i < 0 or i >= self.num_frames for i in ids):
            raise IndexError(f"chunk {self.start}: ids {ids} outside [0, {self.num_frames})")
        self.log.extend([self.start, i] for i in ids)
        out = torch.zeros((len(ids), 1, 1, 3), dtype=torch.int64)
        out[:, 0, 0, 0] = self.chunk_no
        out[:, 0, 0, 1] = torch.tensor(ids)
        return out


def _fake_decoder(root: str, vid: str, chunk_lengths: dict[int, int], log: list):
    paths = {chunk_path(root, vid, start): (start, n) for start, n in chunk_lengths.items()}
    order = {start: k for k, start in enumerate(sorted(chunk_lengths))}

    def open_chunk(path: str):
        if path not in paths:
            raise MissingVideoError(path)
        start, n = paths[path]
        return _LoggedChunk(start, n, log, order[start])

    return open_chunk, order


def check_chunked_video_loader(fixture_name: str, section: list) -> list[Check]:
    checks = []
    root, vid = "fake_root", "video"
    for i, case in enumerate(section):
        lengths = {int(k): int(v) for k, v in case["chunk_lengths_frames"].items()}
        log: list = []
        decoder, order = _fake_decoder(root, vid, lengths, log)
        name = f"chunked_video_loader[{i}]"
        try:
            frames = video_loader(
                root,
                vid,
                case["second"],
                case["end_second"],
                chunk_len=case.get("chunk_len", 300),
                fps=case.get("fps", 30),
                clip_length=case["clip_length"],
                jitter=bool(case.get("jitter", False)),
                decoder=decoder,
            )
        except Exception as err:
            checks.append(Check(fixture_name, f"{name} ({type(err).__name__}: {err})", float("inf"), 0.0, False))
            continue
        err = _list_diff(log, case["read"])
        # The returned frames must be the reads that produced the clip, in clip order.
        starts = sorted(lengths)
        returned = [[starts[int(f[0, 0, 0])], int(f[0, 0, 1])] for f in frames]
        err += _list_diff(returned, case["read"][-len(returned) :] if returned else [])
        err += abs(len(returned) - case["clip_length"])
        checks.append(Check.compare(fixture_name, name, err, 0))
    return checks
