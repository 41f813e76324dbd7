"""Getting a model: ``--checkpoint`` as a local file, a released model-zoo name or a URL.

:func:`resolve_checkpoint` turns any of the three into a local path. Released files and URLs are downloaded once
into a cache (``$LAVILA_CACHE``, default ``~/.cache/lavila``; layout ``checkpoints/<path under the base URL>``
for released files, ``checkpoints/urls/<sha1 of the URL>/<file name>`` for other URLs) with a progress bar.

Why verify: the released files are 0.5-6 GB downloads that a dropped connection truncates, and a truncated
``.pth`` fails much later with an unhelpful unpickling error (or, worse, loads a partial state dict). The file
names carry the first 6 hex digits of their md5 (``...md5sum_d73a9c.pth``); the model zoo lists the same prefix
for the two baseline files whose names do not. A download whose md5 does not match is deleted and refused with one
line. A download is written to a temporary file and renamed into the cache only after it was verified, so a file
in the cache is a verified file: a cache hit is not hashed again (hashing 6 GB takes seconds per run).

Names are listed in :data:`RELEASED` (and in ``docs/models.md``); a released file's own name (e.g.
``clip_openai_timesformer_base.narrator_rephraser.ep_0005.md5sum_d73a9c.pth``) is accepted as well.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lavila.errors import LavilaError

BASE_URL = "https://dl.fbaipublicfiles.com/lavila/checkpoints/"
CACHE_ENV = "LAVILA_CACHE"
_MD5_IN_NAME = re.compile(r"md5sum_([0-9a-f]{6,32})", re.IGNORECASE)
_CHUNK = 1 << 20


class HubError(LavilaError):
    """A checkpoint that cannot be found, downloaded or verified; the message says which and what to do."""


@dataclass(frozen=True)
class Released:
    """One released checkpoint of the LaViLa model zoo (spec section 10.1)."""

    name: str  # what ``--checkpoint`` accepts
    path: str  # under BASE_URL
    kind: str  # "dual_encoder", "vclm" (narrator) or "classifier"
    model: str  # the registry row its ``args.model`` names
    md5: str | None  # md5 prefix the model zoo publishes (None: not published)
    note: str = ""

    @property
    def url(self) -> str:
        return BASE_URL + self.path

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


_DE = "dual_encoders"
RELEASED: dict[str, Released] = {r.name: r for r in [
    # narrators
    Released("narrator-tsf-b-gpt2", "narrator/vclm_openai_timesformer_base_gpt2_base.pt_ego4d.jobid_319630.ep_0002."
             "md5sum_68a71f.pth", "vclm", "VCLM_OPENAI_TIMESFORMER_BASE_GPT2", "68a71f",
             "Ego4D narrator TSF-B + GPT-2 (METEOR 0.282, ROUGE-L 0.517, CIDEr 0.833)"),
    Released("narrator-tsf-l336-gpt2xl", "narrator/vclm_openai_timesformer_large_336px_gpt2_xl.pt_ego4d.jobid_246897."
             "ep_0003.md5sum_443263.pth", "vclm", "VCLM_OPENAI_TIMESFORMER_LARGE_336PX_GPT2_XL", "443263",
             "Ego4D narrator TSF-L@336 + GPT-2 XL (0.298 / 0.539 / 0.977)"),
    Released("narrator-htm-aa-tsf-l-gpt2xl", "narrator/htm_aa/vclm_openai_timesformer_large_gpt2_xl.pt_htm."
             "jobid_341080.ep_0001.pth", "vclm", "VCLM_OPENAI_TIMESFORMER_LARGE_GPT2_XL", None,
             "third-person narrator (HowTo100M auto-aligned), the reference's demo; no md5 published"),
    # dual encoders, Ego4D pre-training
    Released("lavila-tsf-b", f"{_DE}/ego4d/clip_openai_timesformer_base.narrator_rephraser.ep_0005.md5sum_d73a9c.pth",
             "dual_encoder", "CLIP_OPENAI_TIMESFORMER_BASE", "d73a9c", "LaViLa TSF-B, epoch 5 (best; zero-shot)"),
    Released("lavila-tsf-b-ep1", f"{_DE}/ego4d/clip_openai_timesformer_base.narrator_rephraser.ep_0001."
             "md5sum_02dbb9.pth", "dual_encoder", "CLIP_OPENAI_TIMESFORMER_BASE", "02dbb9",
             "LaViLa TSF-B, epoch 1 (Charades-Ego zero-shot and fine-tuning)"),
    Released("lavila-tsf-l", f"{_DE}/ego4d/clip_openai_timesformer_large.narrator_rephraser.ep_0003.md5sum_c89337.pth",
             "dual_encoder", "CLIP_OPENAI_TIMESFORMER_LARGE", "c89337", "LaViLa TSF-L, epoch 3 (best; zero-shot)"),
    Released("lavila-tsf-l-ep1", f"{_DE}/ego4d/clip_openai_timesformer_large.narrator_rephraser.ep_0001."
             "md5sum_9a25de.pth", "dual_encoder", "CLIP_OPENAI_TIMESFORMER_LARGE", "9a25de",
             "LaViLa TSF-L, epoch 1 (Charades-Ego)"),
    Released("baseline-tsf-b", f"{_DE}/ego4d/clip_openai_timesformer_base.baseline.ep_0003.pth", "dual_encoder",
             "CLIP_OPENAI_TIMESFORMER_BASE", "dbcc4d", "baseline TSF-B (the narrator's visual encoder)"),
    Released("baseline-tsf-l336", f"{_DE}/ego4d/clip_openai_timesformer_large_336px_distilbert_base.baseline."
             "ep_0003.pth", "dual_encoder", "CLIP_OPENAI_TIMESFORMER_LARGE_336PX_DISTILBERT_BASE", "5c69b8",
             "baseline TSF-L@336 + DistilBERT (the XL narrator's visual encoder)"),
    Released("egovlp-ep1", f"{_DE}/ego4d/egovlp_epo1_converted_f16.md5sum_7a3d3b.pth", "dual_encoder",
             "CLIP_HF_EGOVLP_DISTILBERT_BASE", "7a3d3b", "EgoVLP epoch 1, converted (previous state of the art)"),
    Released("egovlp", f"{_DE}/ego4d/egovlp_converted_f16.md5sum_c33363.pth", "dual_encoder",
             "CLIP_HF_EGOVLP_DISTILBERT_BASE", "c33363", "EgoVLP best epoch, converted"),
    # fine-tuned
    Released("lavila-tsf-b-ek100-mir", f"{_DE}/ek100_mir/clip_openai_timesformer_base.ft_ek100_mir.ep_0085."
             "md5sum_c67d95.pth", "dual_encoder", "CLIP_OPENAI_TIMESFORMER_BASE", "c67d95",
             "fine-tuned EK-100 MIR (mAP 50.5, nDCG 65.0)"),
    Released("lavila-tsf-l-ek100-mir", f"{_DE}/ek100_mir/clip_openai_timesformer_large.ft_ek100_mir.ep_0095."
             "md5sum_bd508b.pth", "dual_encoder", "CLIP_OPENAI_TIMESFORMER_LARGE", "bd508b",
             "fine-tuned EK-100 MIR (50.9 / 66.5)"),
    Released("lavila-tsf-b-charades-ego", f"{_DE}/charades_ego/clip_openai_timesformer_base.ft_charades_ego.ep_0005."
             "md5sum_39bf4b.pth", "dual_encoder", "CLIP_OPENAI_TIMESFORMER_BASE", "39bf4b",
             "fine-tuned Charades-Ego (mAP 33.7)"),
    Released("lavila-tsf-l-charades-ego", f"{_DE}/charades_ego/clip_openai_timesformer_large.ft_charades_ego.ep_0003."
             "md5sum_9448b2.pth", "dual_encoder", "CLIP_OPENAI_TIMESFORMER_LARGE", "9448b2",
             "fine-tuned Charades-Ego (36.1)"),
    Released("lavila-tsf-b-ek100-cls-single-head", f"{_DE}/ek100_cls/clip_openai_timesformer_base.ft_ek100_cls."
             "single_head.ep_0100.md5sum_e8aa0c.pth", "classifier", "CLIP_OPENAI_TIMESFORMER_BASE", "e8aa0c",
             "fine-tuned EK-100 CLS, one head (action top-1 46.2)"),
    Released("lavila-tsf-b-ek100-cls", f"{_DE}/ek100_cls/clip_openai_timesformer_base.ft_ek100_cls.ep_0100."
             "md5sum_4e3575.pth", "classifier", "CLIP_OPENAI_TIMESFORMER_BASE", "4e3575",
             "fine-tuned EK-100 CLS, verb+noun+action heads (46.9)"),
    Released("lavila-tsf-l-ek100-cls", f"{_DE}/ek100_cls/clip_openai_timesformer_large.ft_ek100_cls.ep_0090."
             "md5sum_4a2509.pth", "classifier", "CLIP_OPENAI_TIMESFORMER_LARGE", "4a2509",
             "fine-tuned EK-100 CLS, three heads (51.0)"),
    Released("lavila-tsf-b-egtea", f"{_DE}/egtea/clip_openai_timesformer_base.ft_egtea.ep_0090.md5sum_3b1faf.pth",
             "classifier", "CLIP_OPENAI_TIMESFORMER_BASE", "3b1faf", "fine-tuned EGTEA (mean acc 70.12)"),
    Released("lavila-tsf-l-egtea", f"{_DE}/egtea/clip_openai_timesformer_large.ft_egtea.ep_0095.md5sum_a5ba17.pth",
             "classifier", "CLIP_OPENAI_TIMESFORMER_LARGE", "a5ba17", "fine-tuned EGTEA (76.00)"),
]}
_BY_FILENAME = {r.filename: r for r in RELEASED.values()}


def cache_dir() -> Path:
    """``$LAVILA_CACHE``, else ``$XDG_CACHE_HOME/lavila``, else ``~/.cache/lavila``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lavila"


def released(name: str) -> Released | None:
    """The released checkpoint called ``name`` (a zoo name, its file name or its URL), or None."""
    if name in RELEASED:
        return RELEASED[name]
    base = name.rsplit("/", 1)[-1]
    hit = _BY_FILENAME.get(base)
    if hit is not None and (name == base or name == hit.url):
        return hit
    return None


def expected_md5(url_or_name: str) -> str | None:
    """The md5 (prefix) a file must have: the ``md5sum_XXXXXX`` of its name, else the model zoo's, else None."""
    base = urllib.parse.unquote(urllib.parse.urlparse(url_or_name).path.rsplit("/", 1)[-1]) or url_or_name
    m = _MD5_IN_NAME.search(base)
    if m:
        return m.group(1).lower()
    hit = _BY_FILENAME.get(base)
    return hit.md5 if hit else None


def _is_url(s: str) -> bool:
    return urllib.parse.urlparse(s).scheme in ("http", "https", "file")


def cache_path(url: str) -> Path:
    """Where ``url`` is kept in the cache (released files keep their zoo layout)."""
    if url.startswith(BASE_URL):
        rel = urllib.parse.unquote(url[len(BASE_URL):])
        return cache_dir() / "checkpoints" / Path(*[p for p in rel.split("/") if p not in ("", ".", "..")])
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]) or "checkpoint"
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name).lstrip(".") or "checkpoint"
    return cache_dir() / "checkpoints" / "urls" / hashlib.sha1(url.encode()).hexdigest()[:12] / name


# The opener is a module attribute so tests can replace it (no network in tests).
_urlopen = urllib.request.urlopen


def download(url: str, target: Path, md5: str | None = None, *, progress: bool | None = None,
             timeout: float = 60.0) -> Path:
    """Download ``url`` to ``target`` through a temporary file, verifying its md5 prefix; returns ``target``.

    On a mismatch or an interrupted transfer nothing is left at ``target`` (the temporary is deleted) and a
    :class:`HubError` says what happened.
    """
    from tqdm import tqdm

    from lavila.atomic import atomic_target

    target.parent.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty() if progress is None else progress
    digest = hashlib.md5()
    try:
        with atomic_target(target) as tmp:
            try:
                response = _urlopen(url, timeout=timeout)
            except OSError as err:  # URLError, HTTPError, timeouts
                code = getattr(err, "code", None)
                why = getattr(err, "reason", None) or err
                raise HubError(f"cannot download {url}: {f'HTTP {code} ' if code else ''}{why}") from None
            with response, open(tmp, "wb") as out:
                length = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
                total = int(length) if length and str(length).isdigit() else None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name[:40],
                          disable=not show, dynamic_ncols=True) as bar:
                    received = 0
                    while True:
                        block = response.read(_CHUNK)
                        if not block:
                            break
                        out.write(block)
                        digest.update(block)
                        received += len(block)
                        bar.update(len(block))
            if total is not None and received != total:
                raise HubError(f"download of {url} stopped after {received} of {total} bytes; nothing was kept, "
                               "run the command again")
            got = digest.hexdigest()
            if md5 and not got.startswith(md5.lower()):
                raise HubError(f"{url}: md5 of the download is {got[:len(md5)]}..., its name says {md5}: refused and "
                               f"deleted (a corrupt or changed file); run again, or download it yourself and pass "
                               "the path")
    except OSError as err:
        if isinstance(err, HubError):
            raise
        raise HubError(f"cannot download {url} to {target}: {err}") from None
    if not md5:
        print(f"note: {url} publishes no md5, so the download was not verified", file=sys.stderr)
    return target


def resolve_checkpoint(name_or_path_or_url: str | os.PathLike, *, progress: bool | None = None) -> Path:
    """A local path for ``--checkpoint``: an existing file or folder as is, a released name or a URL from the cache
    (downloaded and verified on first use). Anything else raises :class:`HubError` (one line, with a close name
    when there is one)."""
    spec = os.fspath(name_or_path_or_url)
    path = Path(spec).expanduser()
    if path.exists():
        return path
    hit = released(spec)
    url = hit.url if hit is not None else spec if _is_url(spec) else None
    if url is None:
        close = difflib.get_close_matches(spec, list(RELEASED), n=1)
        hint = f" (did you mean the released {close[0]!r}?)" if close else \
            " (not a file, a URL or a released model name; docs/models.md lists the names)"
        raise HubError(f"checkpoint not found: {spec}{hint}", exit_code=2)
    target = cache_path(url)
    if target.is_file():
        return target  # renamed into the cache only after verification
    md5 = hit.md5 if hit is not None else expected_md5(url)
    print(f"downloading {url} -> {target}", file=sys.stderr)
    return download(url, target, md5, progress=progress)


def describe_released() -> list[dict[str, Any]]:
    """Every released checkpoint as a plain row (name, kind, model, md5, url, note): what the docs table lists."""
    return [{"name": r.name, "kind": r.kind, "model": r.model, "md5": r.md5, "url": r.url, "note": r.note}
            for r in RELEASED.values()]


__all__ = ["BASE_URL", "CACHE_ENV", "RELEASED", "HubError", "Released", "cache_dir", "cache_path",
           "describe_released", "download", "expected_md5", "released", "resolve_checkpoint"]
