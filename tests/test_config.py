"""The one configuration path of every verb (lavila.config.parse): YAML + flags through tyro, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from tyro.conf import Positional

from lavila.config import ConfigError, Where, describe_keys, option, parse


@dataclass
class Decoding:
    top_k: int | None = option(None, "top-k (None = off)")
    use_cache: bool = option(True, "KV cache", aliases=("--no-cache",))


@dataclass
class Job:
    """A toy job with every kind of key a verb has."""

    checkpoint: str = option(help="the checkpoint")
    batch_size: int = option(32, "clips per step", positive=True)
    workers: int = option(10, "loader processes", min=0, aliases=("-j",))
    use_volta32: bool = option(False, "32 GB GPUs")
    norm_embed: bool = option(True, "normalise embeddings")
    metadata_aux: list[str] | None = option(None, "extra metadata files")
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas")
    lr: float = option(3e-5, "peak learning rate")
    clip_grad_value: float | None = option(None, "clip at this norm", positive=True)
    kind: Literal["norm", "value"] = option("norm", "clipping kind")
    sparse: bool | None = option(None, "sparse (on), dense (off) or the benchmark's default (unset)")
    steps: int = option(1000, "optimiser steps")
    seed: int = 0
    """a field docstring is help too"""
    launcher: Literal["local", "submitit"] = option("local", "where to run", aliases=("--submit=submitit",))
    decoding: Decoding = field(default_factory=Decoding)

    def validate(self, where: Where) -> None:
        if self.batch_size > 1000:
            raise ConfigError(f"{where('batch_size')}: at most 1000")


@dataclass
class Files:
    src: Positional[Path] = option(help="input")
    videos: Positional[list[str]] = option(default_factory=list, help="more inputs")
    overwrite: bool = option(False, "replace")


def test_every_reference_spelling_is_accepted():
    job = parse(Job, ["--checkpoint", "c.pt", "--batch_size", "8", "--use_volta32", "--metadata-aux", "a", "b",
                      "--no-norm-embed", "--betas", "0.9", "0.98", "-j", "4", "--lr", "-1e-3", "--top-k", "5",
                      "--no-cache", "--clip-grad-value", "none", "--sparse"])
    assert (job.checkpoint, job.batch_size, job.workers, job.use_volta32, job.norm_embed) == ("c.pt", 8, 4, True, False)
    assert job.metadata_aux == ["a", "b"] and job.betas == (0.9, 0.98) and job.lr == -1e-3
    assert job.decoding == Decoding(top_k=5, use_cache=False) and job.clip_grad_value is None and job.sparse is True
    assert parse(Job, ["--checkpoint=c", "--no-sparse"]).sparse is False
    assert parse(Job, ["--checkpoint", "c", "--norm-embed", "false", "--use-volta32", "TRUE"]).use_volta32
    assert parse(Job, ["--checkpoint", "c", "--submit"]).launcher == "submitit"


def test_no_prefix_abbreviations_and_did_you_mean():
    with pytest.raises(ConfigError, match=r"^unknown option --step \(did you mean --steps\?\)$"):
        parse(Job, ["--checkpoint", "c", "--step", "10"])
    # a misspelled required flag is reported as the typo, not as the missing flag
    with pytest.raises(ConfigError, match=r"^unknown option --chekpoint \(did you mean --checkpoint\?\)$"):
        parse(Job, ["--chekpoint", "c"])
    with pytest.raises(ConfigError, match=r"^missing required option --checkpoint$"):
        parse(Job, ["--steps", "3"])


def test_values_are_checked_with_key_and_source(tmp_path):
    for argv, fragment in [
        (["--batch-size", "abc"], r"key 'batch_size' \(--batch-size\): expected an integer, got 'abc'"),
        (["--batch_size", "0"], r"key 'batch_size' \(--batch_size\): must be > 0, got 0"),
        (["-j", "-1"], r"key 'workers' \(-j\): must be >= 0"),
        (["--kind", "max"], r"key 'kind' \(--kind\): 'max' is not one of norm, value"),
        (["--betas", "0.9"], r"key 'betas' \(--betas\): expected 2 values"),
        (["--use-volta32", "maybe"], r"key 'use_volta32' \(--use-volta32\): is a switch; give true or false"),
        (["--batch-size", "2000"], r"key 'batch_size' \(--batch-size\): at most 1000"),  # validate()
    ]:
        with pytest.raises(ConfigError, match=fragment):
            parse(Job, ["--checkpoint", "c", *argv])
    recipe = tmp_path / "job.yaml"
    recipe.write_text("checkpoint: c\nkind: max\n")
    with pytest.raises(ConfigError, match=r"key 'kind' \(.*job\.yaml\): 'max' is not one of norm, value"):
        parse(Job, [], yaml_path=recipe)
    recipe.write_text("checkpoint: c\nbatch_size: 0\n")
    with pytest.raises(ConfigError, match=r"key 'batch_size' \(.*job\.yaml\): must be > 0"):
        parse(Job, [], yaml_path=recipe)


def test_yaml_gives_the_defaults_and_flags_win(tmp_path):
    recipe = tmp_path / "job.yaml"
    recipe.write_text("checkpoint: c.pt\nbatch_size: 8\nbetas: [0.5, 0.6]\nuse_cache: false\n"
                      "decoding: {top_k: 3}\n")
    job = parse(Job, ["--batch-size", "16", "--set", "lr=1e-2"], yaml_path=recipe)
    assert (job.checkpoint, job.batch_size, job.betas, job.lr) == ("c.pt", 16, (0.5, 0.6), 1e-2)
    assert job.decoding == Decoding(top_k=3, use_cache=False)  # nested keys: flat or as a mapping
    assert parse(Job, [], yaml_path=recipe, defaults={"steps": 7}).steps == 7


def test_yaml_errors_are_one_line_and_name_the_file(tmp_path):
    recipe = tmp_path / "config.yaml"
    recipe.write_text("checkpoint: c\nbach_size: 3\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: unknown key 'bach_size' \(did you mean batch_size\?\)$"):
        parse(Job, [], yaml_path=recipe)
    recipe.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: expected a mapping"):
        parse(Job, [], yaml_path=recipe)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00\xff\xfe")
    with pytest.raises(ConfigError, match=r"clip\.mp4: not a YAML config file") as err:
        parse(Job, [], yaml_path=video)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="config file not found"):
        parse(Job, [], yaml_path=tmp_path / "missing.yaml")


def test_help_comes_from_the_dataclass_with_the_file_defaults(tmp_path, capsys):
    recipe = tmp_path / "job.yaml"
    recipe.write_text("checkpoint: c.pt\nsteps: 77\n")
    with pytest.raises(SystemExit) as done:
        parse(Job, ["--help"], prog="lavila toy", yaml_path=recipe)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "usage: lavila toy" in out and "optimiser steps" in out and "77" in out and "--metadata-aux" in out
    assert "a field docstring is help too" in out


def test_list_keys_prints_every_key_with_type_default_and_help(capsys):
    with pytest.raises(SystemExit):
        parse(Job, ["--list-keys"])
    out = capsys.readouterr().out
    assert out == describe_keys(Job) + "\n"
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("--batch-size"))
    assert "int" in line and "32" in line and "clips per step" in line
    assert "(required)" in next(ln for ln in out.splitlines() if "--checkpoint" in ln)
    assert "--top-k" in out and "a field docstring is help too" in out  # nested and docstring keys too


def test_positionals():
    f = parse(Files, ["in.pkl", "a.mp4", "b.mp4", "--overwrite"])
    assert (f.src, f.videos, f.overwrite) == (Path("in.pkl"), ["a.mp4", "b.mp4"], True)
    assert parse(Files, ["--overwrite", "in.pkl"]).videos == []
    with pytest.raises(ConfigError, match="^missing required argument SRC$"):
        parse(Files, ["--overwrite"])


def test_cli_errors_are_one_line_with_exit_code_2(capsys):
    from lavila.cli import main

    for argv, message in [
        (["demo", "--step", "10"], "lavila demo: error: unknown option --step (did you mean --steps?)"),
        (["eval", "egtea", "--chekpoint", "x"],
         "lavila eval: error: unknown option --chekpoint (did you mean --checkpoint?)"),
        (["narrate", "--chekpoint", "x"],
         "lavila narrate: error: unknown option --chekpoint (did you mean --checkpoint?)"),
        (["convert-metadata", "a.pkl"], "lavila convert-metadata: error: missing required argument DST"),
        (["models", "--kind", "clip"], "lavila models: error: key 'kind' (--kind): 'clip' is not one of "
                                       "dual_encoder, vclm"),
    ]:
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.err == message + "\n" and captured.out == ""


def test_every_verb_has_help_and_list_keys(capsys):
    from lavila.cli import COMMANDS, main

    for verb in COMMANDS:
        assert main([verb, "--help"]) == 0, verb
        assert f"lavila {verb}" in capsys.readouterr().out
        assert main([verb, "--list-keys"]) == 0, verb
        assert "default" in capsys.readouterr().out


def test_verbs_accept_a_config_file(tmp_path, capsys):
    from lavila.cli import main

    (tmp_path / "models.yaml").write_text("kind: vclm\n")
    assert main(["models", "--config", str(tmp_path / "models.yaml")]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows and all(" vclm " in r for r in rows)


def test_debug_shows_the_traceback(monkeypatch):
    from lavila.cli import main

    with pytest.raises(ConfigError):
        main(["--debug", "demo", "--step", "1"])
    monkeypatch.setenv("LAVILA_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(["demo", "--step", "1"])


def test_broken_pipe_is_not_a_traceback(tmp_path):
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that already exited: every write gets EPIPE
    proc = subprocess.run([sys.executable, "-m", "lavila.cli", "models"], stdout=write_end, stderr=subprocess.PIPE,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_generic_config_imports_no_task():
    code = "import sys, lavila.config, lavila.cli; print(sorted(m for m in sys.modules if m.startswith('lavila')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "['lavila', 'lavila.cli', 'lavila.config', 'lavila.errors', 'lavila.malloc']"
