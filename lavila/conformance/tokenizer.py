"""Conformance of the CLIP BPE tokenizer against ``tokenizer_clip_<variant>.json`` (exact ids, tolerance 0).

The BPE merges file is looked up next to the fixture first (the shared fixture folder ships it), then through
$LAVILA_BPE_PATH; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lavila.conformance import Check
from lavila.models.tokenizers import BPE_ENV_VAR, BPE_FILENAME, SimpleTokenizer


def _bpe_for(fixture_path: Path) -> Path:
    beside = fixture_path.parent / BPE_FILENAME
    if beside.is_file():
        return beside
    env = os.environ.get(BPE_ENV_VAR)
    if env:
        return Path(env)
    raise FileNotFoundError(
        f"{fixture_path}: the CLIP BPE file is needed: put {BPE_FILENAME} next to the fixture or set {BPE_ENV_VAR}"
    )


def _mismatches(got: torch.Tensor, expected: torch.Tensor) -> int:
    if got.shape != expected.shape:
        return max(got.numel(), expected.numel())  # a shape error fails every position
    return int((got != expected).sum())


def _list_mismatches(got: list, expected: list) -> int:
    return sum(a != b for a, b in zip(got, expected, strict=False)) + abs(len(got) - len(expected))


def check_tokenizer(path: Path) -> list[Check]:
    path = Path(path)
    name = path.name
    try:
        fixture = json.loads(path.read_text(encoding="utf-8"))
        strings = fixture["strings"]
        expected = torch.tensor(fixture["token_ids"], dtype=torch.long)
        context_length = int(fixture["context_length"])
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable fixture ({err})") from err
    except KeyError as err:
        raise ValueError(f"{path}: missing field {err}") from err
    tok = SimpleTokenizer(_bpe_for(path), context_length=context_length)
    got = tok(list(strings), context_length=context_length)

    checks = []
    special = [
        ("vocab_size", tok.vocab_size),
        ("sot_token", tok.sot_token_id),
        ("eot_token", tok.eot_token_id),
        ("pad_token", tok.pad_token_id),
    ]
    wrong = sum(1 for key, value in special if key in fixture and int(fixture[key]) != value)
    checks.append(Check.compare(name, "special_ids", wrong, 0))
    checks.append(Check.compare(name, "token_ids", _mismatches(got, expected), 0))
    if "untruncated_length_with_sot_eot" in fixture:
        lengths = [len(tok.encode(s)) + 2 for s in strings]
        checks.append(
            Check.compare(
                name, "untruncated_length", _list_mismatches(lengths, fixture["untruncated_length_with_sot_eot"]), 0
            )
        )
    if "eot_position_argmax" in fixture:
        # The text tower pools at argmax: this is where truncation without EOT shows up.
        pooled = torch.tensor(fixture["eot_position_argmax"], dtype=torch.long)
        checks.append(Check.compare(name, "eot_position_argmax", _mismatches(got.argmax(-1), pooled), 0))
    if "has_eot" in fixture:
        has_eot = torch.tensor(fixture["has_eot"], dtype=torch.bool)
        eot = int(fixture.get("eot_token", tok.eot_token_id))
        checks.append(Check.compare(name, "has_eot", _mismatches((got == eot).any(-1), has_eot), 0))
    if "decoded_without_special" in fixture:
        decoded = [tok.decode(row, skip_special_tokens=True) for row in got]
        wrong = _list_mismatches(decoded, fixture["decoded_without_special"])
        checks.append(Check.compare(name, "decoded_without_special", wrong, 0))
    return checks
