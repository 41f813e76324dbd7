"""Real 2-process (gloo) check that the distributed losses equal the single-process loss on the global batch.

Gradient bookkeeping being verified (W = world size, L = the global-batch loss, x_r = rank r's local rows):
* every rank evaluates the same L on the gathered batch, and the gather's backward all-reduces (SUM) the
  gradient of the gathered tensor before taking the own slice, so rank r's local embeddings get
  sum over W ranks of dL/dx_r = W * dL/dx_r;
* DDP then averages parameter gradients over ranks: (1/W) * sum_r (W * dL/dx_r) dx_r/dtheta = dL/dtheta, exact;
* scalars that are not gathered (`logit_scale`, SSL's `logit_scale_pseudo`) get dL/ds on every rank (each rank
  holds the full L), which DDP's averaging leaves unchanged.
open_clip's variant without gather-with-grad (local tensors put back in their slot) only gets dL/dx_r (1x),
i.e. 1/W of the true gradient after DDP averaging; the test pins that down too.

The workers are this file run as a script with torchrun's environment variables, so `init_distributed` reads
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT exactly as under torchrun.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lavila import dist as dist_utils
from lavila.models.losses import CLIPLoss, MaxMarginRankingLoss, SSLCLIPLoss

WORLD_SIZE = 2
LOCAL_BATCH = 3
DIM = 8
ATOL = 1e-6


def _global_batch() -> dict:
    g = torch.Generator().manual_seed(1234)
    n = WORLD_SIZE * LOCAL_BATCH
    image = nn.functional.normalize(torch.randn(n, DIM, generator=g), dim=-1)
    text = nn.functional.normalize(image + 0.7 * torch.randn(n, DIM, generator=g), dim=-1)
    return {
        "image": image,
        "text": text,
        "log_scale": torch.tensor(2.3),
        "gt": torch.tensor([True, False, True, True, False, False]),  # both ranks hold GT and pseudo rows
        "video_in": torch.randn(n, 5, generator=g),
        "text_in": torch.randn(n, 4, generator=g),
    }


def _criteria() -> dict:
    return {
        "clip_vissl": lambda: CLIPLoss(use_vissl=True),
        "clip_openclip_local_slot": lambda: CLIPLoss(use_vissl=False),
        "clip_openclip_local_loss": lambda: CLIPLoss(use_vissl=False, local_loss=True, gather_with_grad=True),
        "ssl_faithful": lambda: SSLCLIPLoss(pseudo_temperature_init=0.08),
        "ssl_three_way": lambda: SSLCLIPLoss(pseudo_temperature_init=0.08, faithful=False),
        "max_margin": lambda: MaxMarginRankingLoss(margin=0.2),
    }


class TinyDualEncoder(nn.Module):
    """Two linear towers and a logit scale: enough to exercise DDP's gradient averaging end to end."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.visual = nn.Linear(5, DIM)
        self.textual = nn.Linear(4, DIM)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, video: torch.Tensor, text: torch.Tensor) -> dict:
        return {
            "image_embed": nn.functional.normalize(self.visual(video), dim=-1),
            "text_embed": nn.functional.normalize(self.textual(text), dim=-1),
            "logit_scale": self.logit_scale.exp(),
        }


def _run_cases(rows: slice) -> dict:
    """Loss, metrics and gradients of every criterion on `rows` of the global batch (in whatever group is live)."""
    data = _global_batch()
    results = {}
    for name, make in _criteria().items():
        criterion = make()
        image = data["image"][rows].clone().requires_grad_()
        text = data["text"][rows].clone().requires_grad_()
        log_scale = data["log_scale"].clone().requires_grad_()
        outputs = {"image_embed": image, "text_embed": text, "logit_scale": log_scale.exp()}
        if name.startswith("ssl"):
            outputs["gt_indicators"] = data["gt"][rows]
        out = criterion(outputs)
        out["loss"].backward()
        entry = {k: v.detach().clone() for k, v in out.items()}
        entry["grad_image"], entry["grad_text"] = image.grad, text.grad
        entry["grad_log_scale"] = log_scale.grad if log_scale.grad is not None else torch.tensor(0.0)
        if name.startswith("ssl"):
            entry["grad_pseudo"] = criterion.logit_scale_pseudo.grad
        results[name] = entry

    model = TinyDualEncoder()
    if dist_utils.get_world_size() > 1:
        model = nn.parallel.DistributedDataParallel(model)
    loss = CLIPLoss()(model(data["video_in"][rows], data["text_in"][rows]))["loss"]
    loss.backward()
    results["ddp"] = {"loss": loss.detach(), **{n: p.grad.clone() for n, p in model.named_parameters()}}
    return results


def _worker(out_dir: Path) -> None:
    info = dist_utils.init_distributed(backend="gloo", timeout_minutes=1.0, silence_non_main=False)
    assert info.world_size == WORLD_SIZE and dist_utils.get_world_size() == WORLD_SIZE
    rows = slice(info.rank * LOCAL_BATCH, (info.rank + 1) * LOCAL_BATCH)
    results = _run_cases(rows)
    results["info"] = {"rank": info.rank, "main": dist_utils.is_main_process(), "source": info.source}
    dist_utils.barrier()
    torch.save(results, out_dir / f"rank{info.rank}.pt")
    dist_utils.cleanup()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("dist")
    port = _free_port()
    procs = []
    for rank in range(WORLD_SIZE):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(
            RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port), OMP_NUM_THREADS="1",
        )  # fmt: skip
        cmd = [sys.executable, __file__, str(out_dir)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=180)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed (rc {p.returncode}):\n{log}"
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def single_process_results() -> dict:
    assert dist_utils.get_world_size() == 1
    return _run_cases(slice(None))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_workers_saw_torchrun_environment(distributed_results):
    assert [r["info"]["rank"] for r in distributed_results] == [0, 1]
    assert [r["info"]["main"] for r in distributed_results] == [True, False]
    assert {r["info"]["source"] for r in distributed_results} == {"torchrun"}


@pytest.mark.parametrize("name", ["clip_vissl", "ssl_faithful", "ssl_three_way", "max_margin"])
def test_global_loss_and_gradients_match_single_process(name, distributed_results, single_process_results):
    full = single_process_results[name]
    for rank, results in enumerate(distributed_results):
        got = results[name]
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        for key in full:
            if not key.startswith("grad"):  # loss and every logged metric, on the global batch
                _close(got[key], full[key])
        # gathered embeddings: W copies of the gradient come back through the all-reduce (see module docstring)
        _close(got["grad_image"], WORLD_SIZE * full["grad_image"][rows])
        _close(got["grad_text"], WORLD_SIZE * full["grad_text"][rows])
        # scales are not gathered: every rank holds the full dL/ds
        _close(got["grad_log_scale"], full["grad_log_scale"])
        if "grad_pseudo" in full:
            _close(got["grad_pseudo"], full["grad_pseudo"])


def test_ssl_faithful_and_three_way_differ(single_process_results):
    # Guards the test above against comparing two identical configurations.
    a, b = single_process_results["ssl_faithful"]["loss"], single_process_results["ssl_three_way"]["loss"]
    assert abs(float(a) - float(b)) > 1e-3


def test_openclip_local_loss_averages_to_global_loss(distributed_results, single_process_results):
    full = single_process_results["clip_openclip_local_loss"]
    per_rank = [r["clip_openclip_local_loss"] for r in distributed_results]
    _close(sum(r["loss"] for r in per_rank) / WORLD_SIZE, full["loss"])
    for rank, got in enumerate(per_rank):
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        # each rank's gradient is sum_r' dL_r'/dx_r = W * d(mean_r' L_r')/dx_r = W * dL/dx_r
        _close(got["grad_image"], WORLD_SIZE * full["grad_image"][rows])
        _close(got["grad_text"], WORLD_SIZE * full["grad_text"][rows])
    # logit_scale: DDP's mean of the per-rank dL_r/ds is dL/ds
    _close(sum(r["grad_log_scale"] for r in per_rank) / WORLD_SIZE, full["grad_log_scale"])


def test_openclip_without_gather_grad_gets_only_its_own_slot(distributed_results, single_process_results):
    full = single_process_results["clip_openclip_local_slot"]
    for rank, results in enumerate(distributed_results):
        got = results["clip_openclip_local_slot"]
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        _close(got["loss"], full["loss"])
        _close(got["grad_image"], full["grad_image"][rows])  # 1x, not W x: 1/W of the truth after DDP


def test_ddp_parameter_gradients_equal_full_batch_gradients(distributed_results, single_process_results):
    full = single_process_results["ddp"]
    for results in distributed_results:
        got = results["ddp"]
        _close(got["loss"], full["loss"])
        for name in ("visual.weight", "visual.bias", "textual.weight", "textual.bias", "logit_scale"):
            _close(got[f"module.{name}"], full[name])


def test_world_info_from_env():
    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "SLURM_PROCID": "5"}
    assert dist_utils.world_info_from_env(torchrun) == dist_utils.DistInfo(3, 8, 1, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5"}
    assert dist_utils.world_info_from_env(slurm) == dist_utils.DistInfo(5, 16, 5, "slurm")
    assert dist_utils.world_info_from_env({}) == dist_utils.DistInfo(0, 1, 0, "none")
    assert not dist_utils.world_info_from_env({}).distributed
    with pytest.raises(ValueError, match="RANK"):
        dist_utils.world_info_from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_init_without_rendezvous_says_how_to_fix():
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        dist_utils.init_distributed(env={"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))


def test_resolve_device_is_the_one_device_rule(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dist_utils.resolve_device() == dist_utils.resolve_device("auto") == dist_utils.resolve_device(None) \
        == torch.device("cpu")
    assert dist_utils.resolve_device("cuda", 3) == torch.device("cuda", 3)  # asked for: no silent CPU fallback
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dist_utils.resolve_device("auto", 2) == torch.device("cuda", 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert dist_utils.resolve_device() == torch.device("cuda", 1)  # the launcher's local rank by default
    assert dist_utils.resolve_device("cuda:0") == torch.device("cuda", 0)
    assert dist_utils.resolve_device("cpu") == torch.device("cpu")
