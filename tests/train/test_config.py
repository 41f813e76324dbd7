"""Recipes as YAML, reference flags as overrides, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from lavila.cli import main as lavila_main
from lavila.config import ConfigError
from lavila.train.recipe import build_config, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def test_reference_flags_flag_for_flag(tmp_path):
    flags = [
        "--model", "CLIP_OPENAI_TIMESFORMER_LARGE", "--norm-embed", "--freeze-temperature", "--fix-lr",
        "--contrastive-use-vissl", "--batch-size", "8", "--use-checkpoint", "--use-zero",
        "--metadata", "m/ego4d_train.rephraser.pkl", "--metadata-aux", "a.pkl", "b.pkl",
        "--freeze-pseudo-temperature", "--disable-amp", "--resume", "r.pt", "--clip-grad-value", "1.0",
        "--clip-grad-type", "value", "--update-freq", "2", "--epochs", "3", "--lr", "1e-4", "--lr-start", "2e-6",
        "--lr-end", "5e-6", "--warmup-epochs", "2", "--wd", "0.05", "--betas", "0.9", "0.98", "--eps", "1e-6",
        "--clip-length", "8", "--clip-stride", "4", "--project-embed-dim", "512", "--pseudo-temperature-init",
        "0.1", "--output-dir", str(tmp_path), "--eval-freq", "2", "--save-freq", "3", "--print-freq", "5",
        "-j", "4", "--seed", "7", "--nodes", "2", "--ngpus", "4", "--use_volta32", "--partition", "dev",
        "--timeout", "60", "--job_dir", "jobs/%j", "--comment", "paper deadline",
    ]
    cfg = load_config(None, flags)
    o = cfg  # the task's keys are fields of its config subclass (DualEncoderConfig)
    assert cfg.model == "CLIP_OPENAI_TIMESFORMER_LARGE" and cfg.task == "dual_encoder"
    assert o.norm_embed and o.freeze_temperature and o.contrastive_use_vissl and o.freeze_pseudo_temperature
    assert cfg.fix_lr and cfg.use_checkpoint and cfg.use_zero and cfg.disable_amp and cfg.use_volta32
    assert o.metadata_aux == ["a.pkl", "b.pkl"] and cfg.metadata == "m/ego4d_train.rephraser.pkl"
    assert (cfg.batch_size, cfg.update_freq, cfg.epochs, cfg.clip_length, cfg.clip_stride) == (8, 2, 3, 8, 4)
    assert (cfg.lr, cfg.lr_start, cfg.lr_end, cfg.warmup_epochs, cfg.wd) == (1e-4, 2e-6, 5e-6, 2.0, 0.05)
    assert cfg.betas == (0.9, 0.98) and cfg.eps == 1e-6
    assert cfg.clip_grad_value == 1.0 and cfg.clip_grad_type == "value" and cfg.resume == "r.pt"
    assert o.project_embed_dim == 512 and o.pseudo_temperature_init == 0.1
    assert (cfg.eval_freq, cfg.save_freq, cfg.print_freq, cfg.workers, cfg.seed) == (2, 3, 5, 4, 7)
    assert (cfg.nodes, cfg.ngpus, cfg.partition, cfg.timeout, cfg.job_dir, cfg.comment) == (
        2, 4, "dev", 60, "jobs/%j", "paper deadline")
    assert not cfg.submit_requested  # SLURM flags alone never submit: the launcher key decides
    assert load_config(None, [*flags, "--submit"]).submit_requested
    assert load_config(None, [*flags, "--launcher", "submitit"]).submit_requested


def test_overrides_win_over_the_file_and_set_syntax(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: CLIP_OPENAI_TIMESFORMER_BASE\nlr: 0.1\nepochs: 2\nnorm_embed: true\nnodes: 4\n")
    cfg = load_config(path, ["--lr", "0.5", "--set", "wd=0", "--no-norm-embed", "--set=model_overrides={img_size: 32}"])
    assert cfg.lr == 0.5 and cfg.wd == 0.0 and cfg.epochs == 2 and cfg.norm_embed is False
    assert cfg.model_overrides == {"img_size": 32}
    assert cfg.nodes == 4 and not cfg.submit_requested  # SLURM keys in the file alone do not submit
    assert load_config(path, ["--norm-embed", "false"]).norm_embed is False
    assert load_config(path, ["--clip-grad-value", "none"]).clip_grad_value is None


@pytest.mark.parametrize(
    ("tokens", "key", "fragment"),
    [
        (["--lr", "abc"], "lr", "expected a number"),
        (["--batch-size", "0"], "batch_size", "must be > 0"),
        (["--batch-size", "2.5"], "batch_size", "expected an integer"),
        (["--clip-grad-type", "max"], "clip_grad_type", "not one of"),
        (["--betas", "0.9"], "betas", "expected 2 values"),
        (["--betas", "0.9", "1.5"], "betas", "[0, 1)"),
        (["--norm-embed", "maybe"], "norm_embed", "true or false"),
        (["--metadata", "ego4d.pkl"], "metadata", "must contain 'train'"),
        (["--epochs", "1", "--warmup-epochs", "2"], "warmup_epochs", "exceeds epochs"),
        (["--model", "NOT_A_MODEL"], "model", "unknown model"),
        (["--device", "tpu"], "device", "expected auto, cpu, cuda"),
    ],
)
def test_bad_values_name_the_key(tokens, key, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, tokens)
    assert repr(key) in str(err.value) and fragment in str(err.value)
    assert tokens[0] in str(err.value) or key in ("warmup_epochs",)


def test_unknown_flag_suggests_the_closest_one():
    with pytest.raises(ConfigError, match=r"^unknown option --lrr \(did you mean --lr\?\)$"):
        load_config(None, ["--lrr", "1"])


def test_bad_file_value_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: five\n")
    with pytest.raises(ConfigError, match=r"key 'epochs' \(.*bad\.yaml\): expected an integer"):
        load_config(path)
    path.write_text("epochz: 5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'epochz' \(did you mean epochs\?\)"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("lr: 0.1\n")
    assert lavila_main(["train", str(path), "--batch-size", "-3", "--dry-run"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert lavila_main(["train", str(path), "--batch-size", "3", "--dry-run"]) == 0
    assert "batch_size: 3" in capsys.readouterr().out


# The reference's documented runs (spec 8.2), written down independently of the YAML files.
SPEC_DEFAULTS = {"epochs": 5, "warmup_epochs": 1.0, "lr": 3e-5, "lr_start": 1e-6, "lr_end": 1e-5, "wd": 0.01,
                 "betas": (0.9, 0.999), "eps": 1e-8, "clip_length": 4, "clip_stride": 16, "workers": 10,
                 "eval_freq": 99, "save_freq": 1, "print_freq": 10, "seed": 0, "fix_lr": True,
                 "root": "datasets/Ego4D/video_5min_chunks_288px/", "disable_amp": False, "update_freq": 1}
SPEC_TASK = {"temperature_init": 0.07, "pseudo_temperature_init": 0.07, "project_embed_dim": 256,
             "norm_embed": True, "freeze_temperature": True, "contrastive_use_vissl": True}
RUNS = {
    "pretrain_baseline_tsf_b.yaml": ("CLIP_OPENAI_TIMESFORMER_BASE", 32, 4, False, False, None),
    "pretrain_baseline_tsf_l336_distilbert.yaml": ("CLIP_OPENAI_TIMESFORMER_LARGE_336PX_DISTILBERT_BASE", 8, 8, True,
                                                   True, None),
    "pretrain_lavila_tsf_b.yaml": ("CLIP_OPENAI_TIMESFORMER_BASE", 32, 4, False, False,
                                   ["datasets/Ego4D/ego4d_train.narrator_63690737.return_10.pkl"]),
    "pretrain_lavila_tsf_l.yaml": ("CLIP_OPENAI_TIMESFORMER_LARGE", 8, 8, True, True,
                                   ["datasets/Ego4D/ego4d_train.narrator_63690737.return_10.pkl"]),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_recipes_hold_the_reference_hyperparameters(name):
    model, batch, nodes, ckpt, zero, aux = RUNS[name]
    cfg = load_config(CONFIGS / name)
    for key, value in SPEC_DEFAULTS.items():
        assert getattr(cfg, key) == value, key
    for key, value in SPEC_TASK.items():
        assert getattr(cfg, key) == value, key
    assert (cfg.model, cfg.batch_size, cfg.nodes, cfg.ngpus) == (model, batch, nodes, 8)
    assert (cfg.use_checkpoint, cfg.use_zero, cfg.metadata_aux) == (ckpt, zero, aux)
    assert cfg.freeze_pseudo_temperature == (aux is not None)
    if aux:
        assert cfg.metadata == "datasets/Ego4D/ego4d_train.rephraser.no_punkt_top3.pkl"
    else:
        assert cfg.metadata == "datasets/Ego4D/ego4d_train.pkl"
    assert not cfg.submit_requested


def test_round_trip_through_flat_dict_and_namespace(tmp_path):
    cfg = load_config(CONFIGS / "pretrain_lavila_tsf_b.yaml", ["--output-dir", str(tmp_path)])
    again = build_config(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    ns = cfg.to_namespace()  # what loaders of reference checkpoints read
    assert ns.model == "CLIP_OPENAI_TIMESFORMER_BASE" and ns.clip_length == 4 and ns.norm_embed is True
    assert ns.project_embed_dim == 256


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads_and_its_dry_run_round_trips(path, tmp_path, capsys):
    cfg = load_config(path)
    assert cfg.task and type(cfg).__name__.endswith("Config") and not cfg.submit_requested
    assert lavila_main(["train", str(path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(printed)
    assert load_config(resolved).to_dict() == cfg.to_dict()  # the printed YAML is the whole, loadable config


def test_the_task_owns_its_config_class(tmp_path):
    from lavila.train.tasks.dual_encoder import DualEncoderConfig
    from lavila.train.tasks.finetune import FinetuneConfig
    from lavila.train.tasks.narrator import NarratorConfig

    assert type(load_config(CONFIGS / "pretrain_baseline_tsf_b.yaml")) is DualEncoderConfig
    assert type(load_config(CONFIGS / "narrator_tsf_b_gpt2.yaml")) is NarratorConfig
    assert type(load_config(CONFIGS / "finetune_egtea.yaml")) is FinetuneConfig  # task: module:Class
    # without task: the model's kind decides; --task overrides the file
    assert type(load_config(None, ["--model", "VCLM_OPENAI_TIMESFORMER_BASE_GPT2"])) is NarratorConfig
    cfg = load_config(None, ["--task", "finetune_retrieval", "--dataset", "ek100_mir"])
    assert type(cfg) is FinetuneConfig and cfg.task == "finetune_retrieval"
    with pytest.raises(ConfigError, match=r"unknown option --freeze-lm-vclm"):  # a narrator key, not a dual encoder's
        load_config(CONFIGS / "pretrain_baseline_tsf_b.yaml", ["--freeze-lm-vclm"])
    with pytest.raises(ConfigError, match=r"key 'task' \(--task\): unknown task 'nope'"):
        load_config(None, ["--task", "nope"])


def test_train_list_keys_shows_the_tasks_keys(capsys):
    assert lavila_main(["train", str(CONFIGS / "narrator_tsf_b_gpt2.yaml"), "--list-keys"]) == 0
    out = capsys.readouterr().out
    assert "--freeze-lm-vclm" in out and "--batch-size" in out and "--launcher" in out
    assert lavila_main(["train", "--list-keys"]) == 0  # no recipe: the defaults (dual encoder)
    assert "--norm-embed" in capsys.readouterr().out


def test_train_refuses_a_video_as_config_before_writing_anything(tmp_path, capsys, monkeypatch):
    video = tmp_path / "clip.mp4"
    video.write_bytes(bytes(range(256)) * 4)
    monkeypatch.chdir(tmp_path)
    assert lavila_main(["train", str(video)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "clip.mp4: not a YAML config file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_train_reports_typos_in_the_recipe_and_the_flags(tmp_path, capsys):
    recipe = tmp_path / "config.yaml"
    recipe.write_text("bach_size: 3\n")
    assert lavila_main(["train", str(recipe)]) == 2
    assert capsys.readouterr().err == (f"lavila train: error: {recipe}: unknown key 'bach_size' "
                                       "(did you mean batch_size?)\n")
    assert lavila_main(["train", "-", "--bach-size", "3"]) == 2
    assert capsys.readouterr().err == "lavila train: error: unknown option --bach-size (did you mean --batch-size?)\n"


def test_namespace_for_checkpoints_holds_every_key():
    cfg = load_config(CONFIGS / "finetune_ek100_cls.yaml")
    ns = vars(cfg.to_namespace())
    assert ns == cfg.to_dict() and ns["num_classes"] == cfg.num_classes and ns["lr"] == cfg.lr
