"""The trainer end to end through the command line, on tiny models.

`styleprefs build` sample data and `styleprefs cache` it; `train --stage sft`, then `--stage rpo --init`
the SFT output, which loads in the diffusers pipeline and generates; a tiny SDXL run; `kill -9` of a
training process after its first checkpoint, then `--resume`, equal to an uninterrupted run; a real
`torchrun --nproc_per_node 2` CPU run whose processes end with the same weights; bad input as one
line and exit code 2. Subprocesses run the installed console script with OMP_NUM_THREADS=1, as
in-process runs use one thread, so both compute bit for bit the same.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file

from conftest import pickapic_rows, write_pickapic_parquet
from styleprefs.cli.app import main
from styleprefs.tiny import ensure_tiny
from styleprefs.trainer import loop
from styleprefs.trainer.checkpoint import list_checkpoints

BIN = Path(sys.executable).parent  # the venv's bin: styleprefs and torchrun
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
LOG2 = math.log(2)
TIMEOUT = 300
TINY = {"model": "tiny", "resolution": 64, "batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 2,
        "warmup_steps": 0, "learning_rate": 1e-4, "clip_model": "tiny", "report_to": "none", "checkpoint_every": 0}
PROGRESS_BARS = ("Loading pipeline components", "Loading weights", "Writing model shards")


def train_args(stage: str, data: Path, out: Path, **options) -> list[str]:
    """`train` arguments: TINY's options, then ``options`` (True is a bare flag)."""
    args = ["train", "--stage", stage, "--data", str(data), "--out", str(out)]
    for name, value in (TINY | options).items():
        args += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return args


def cli(args: list, capsys) -> tuple[int, str, str]:
    """``styleprefs ARGS`` in this process: exit code, stdout, stderr."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_ok(args: list, capsys) -> tuple[str, str]:
    code, out, err = cli(args, capsys)
    assert code == 0, err
    return out, err


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors that are not bit for bit equal (both must have the same names)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 sample pairs from `styleprefs build`, cached by `styleprefs cache` with and without tiny CLIP embeddings."""
    data = tmp_path_factory.mktemp("e2e") / "data"
    main(["build", "--source", "sample", "--num-pairs", "8", "--shard-size", "8", "--out", str(data)])
    for clip in ("tiny", "none"):
        main(["cache", str(data), "--model", "tiny", "--resolution", "64", "--clip-model", clip])
    return data


def test_sft_then_rpo_from_the_sft_output_loads_in_diffusers_and_generates(dataset: Path, tmp_path: Path,
                                                                           capsys) -> None:
    sft, rpo = tmp_path / "sft", tmp_path / "rpo"
    out, err = run_ok(train_args("sft", dataset, sft, learning_rate=1e-3), capsys)
    assert f"trained pipeline written to {sft}" in out
    assert not any(bar in err for bar in PROGRESS_BARS), err  # third-party progress bars are silenced
    run_ok(train_args("rpo", dataset, rpo, init=sft), capsys)

    rows = metrics(rpo)
    assert [r["step"] for r in rows] == [0, 1] and not any(r["skipped"] for r in rows)
    # --init is the reference too: both start as the SFT model, so every logit is 0 at step 0.
    assert rows[0]["loss"] == pytest.approx(LOG2, abs=1e-6) and rows[0]["mse_w"] == rows[0]["ref_mse_w"]
    base = load_file(ensure_tiny("tiny") / "unet" / "diffusion_pytorch_model.safetensors")
    assert differing(unet_weights(sft), base)
    assert differing(unet_weights(rpo), unet_weights(sft))  # weights differ from the init

    pipe = StableDiffusionPipeline.from_pretrained(rpo)
    pipe.set_progress_bar_config(disable=True)
    assert not differing(pipe.unet.state_dict(), unet_weights(rpo))
    images = pipe("a red fox in the snow", height=64, width=64, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all() and images.std() > 0


def test_rpo_chained_on_an_sft_checkpoint_without_model_and_the_checkpoint_evaluates(dataset: Path, tmp_path: Path,
                                                                                     capsys) -> None:
    """`train --stage rpo --init RUN/checkpoints/step-N` with no --model takes the base the SFT run recorded
    (tiny, offline); `eval generate` and `eval implicit-acc` take the checkpoint as --model."""
    sft, rpo = tmp_path / "sft", tmp_path / "rpo"
    run_ok(train_args("sft", dataset, sft, learning_rate=1e-3, checkpoint_every=1), capsys)
    checkpoint = list_checkpoints(sft)[0]
    args = [a for a in train_args("rpo", dataset, rpo, init=checkpoint, clip_model="none") if a != "--model"]
    args.remove("tiny")
    _, err = run_ok(args, capsys)
    assert f"base tiny, policy from {checkpoint}" in err
    assert metrics(rpo)[0]["mse_w"] == metrics(rpo)[0]["ref_mse_w"]  # --init is the reference

    run_ok(["eval", "generate", "--model", checkpoint, "--prompts", dataset, "--out", tmp_path / "gen",
            "--images-per-prompt", "1", "--steps", "2", "--limit", "1", "--resolution", "64", "--device", "cpu"], capsys)
    assert len(list((tmp_path / "gen").rglob("*.png"))) == 1
    run_ok(["eval", "implicit-acc", "--model", checkpoint, "--ref", "tiny", "--data", dataset, "--draws", "1",
            "--limit", "2", "--device", "cpu", "--out", tmp_path / "acc.json"], capsys)
    assert 0 <= json.loads((tmp_path / "acc.json").read_text())["implicit_acc"] <= 1


def test_tiny_sdxl_run_takes_steps(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sdxl"
    run_ok(train_args("dpo", dataset, out, model="tiny-sdxl", learning_rate=1e-3), capsys)
    rows = metrics(out)
    assert [r["step"] for r in rows] == [0, 1] and not any(r["skipped"] for r in rows)
    assert rows[1]["mse_w"] != rows[1]["ref_mse_w"]  # the policy moved away from the reference
    base = load_file(ensure_tiny("tiny-sdxl") / "unet" / "diffusion_pytorch_model.safetensors")
    assert differing(unet_weights(out), base)
    pipe = StableDiffusionXLPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a cabin", height=64, width=64, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_rpo_with_clip_model_none_uses_the_cached_clip_embeddings(dataset: Path, tmp_path: Path, capsys) -> None:
    # tau 0.1 makes the weights depend on the embeddings; step 1's logits are not 0.
    run_ok(train_args("rpo", dataset, tmp_path / "tiny", tau=0.1), capsys)
    run_ok(train_args("rpo", dataset, tmp_path / "none", tau=0.1, clip_model="none"), capsys)
    assert metrics(tmp_path / "none") == metrics(tmp_path / "tiny")
    assert metrics(tmp_path / "none")[1]["loss"] != pytest.approx(LOG2, rel=1e-3)


def test_kill_9_after_the_first_checkpoint_then_resume_equals_an_uninterrupted_run(dataset: Path, tmp_path: Path,
                                                                                    capsys) -> None:
    """The killed process is asked for 1000 steps, so the kill surely lands mid-run (max_steps may change on resume);
    the uninterrupted run trains in this process meanwhile, and the resumed run after it."""
    opts = {"max_steps": 4, "checkpoint_every": 1, "learning_rate": 1e-3}
    out = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen([BIN / "styleprefs", *train_args("dpo", dataset, out, **(opts | {"max_steps": 1000}))],
                                  env=ENV, stdout=log, stderr=subprocess.STDOUT)
    first = out / "checkpoints" / "step-000001"

    def kill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + TIMEOUT
        while not first.is_dir() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)

    watcher = threading.Thread(target=kill_after_first_checkpoint)
    watcher.start()
    try:
        run_ok(train_args("dpo", dataset, tmp_path / "straight", **opts), capsys)
    finally:
        watcher.join()
    assert killed.wait() == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(out)]
    assert steps and steps[-1] < opts["max_steps"] and not (out / "model_index.json").exists()

    _, err = run_ok([*train_args("dpo", dataset, out, **opts), "--resume"], capsys)
    assert f"resuming from {out / 'checkpoints' / f'step-{steps[-1]:06d}'}" in err
    assert not differing(unet_weights(out), unet_weights(tmp_path / "straight"))
    assert metrics(out) == metrics(tmp_path / "straight")  # redone steps replaced, not duplicated


def test_torchrun_two_cpu_processes_train_in_sync(dataset: Path, tmp_path: Path, capsys) -> None:
    """RPO with the losers gathered across processes: 2 processes x 1 pair take the same pairs and draws as
    1 process x 2 pairs, so the first step's loss and gradient norm match; the loop checks the processes'
    weights agree before saving (weight_divergence, tested below)."""
    opts = {"gather_rpo": True, "learning_rate": 1e-3}
    out = tmp_path / "two"
    two = subprocess.Popen([BIN / "torchrun", "--standalone", "--nproc_per_node", "2", "--no-python",
                            BIN / "styleprefs", *train_args("rpo", dataset, out, **(opts | {"batch_size": 1}))],
                           env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_ok(train_args("rpo", dataset, tmp_path / "one", **opts), capsys)
        stdout, stderr = two.communicate(timeout=TIMEOUT)
    finally:
        two.kill()
    assert two.returncode == 0, stderr[-3000:]
    assert "1 pairs x 2 processes" in stderr and "weights identical on all 2 processes" in stderr
    assert stdout.count("trained pipeline written") == 1
    single, double = metrics(tmp_path / "one"), metrics(out)
    assert [r["step"] for r in double] == [0, 1]
    for key in ("loss", "grad_norm", "mse_w", "mse_l", "ref_mse_w"):  # the gradient was averaged over processes
        assert double[0][key] == pytest.approx(single[0][key], rel=1e-5), key
    assert double[1]["loss"] == pytest.approx(single[1]["loss"], rel=1e-3)
    StableDiffusionPipeline.from_pretrained(out)


def _divergence_worker(rank: int, store: str, case: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    with torch.no_grad():
        if case == "one weight off" and rank == 1:
            module.weight[1, 2] += 1e-3
        if case == "NaN on both" or (case == "NaN on one" and rank == 1):
            module.bias[0] = math.nan
    results.put((rank, loop.weight_divergence(module)))
    dist.destroy_process_group()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks two gloo processes")
@pytest.mark.parametrize("case, expected", [("same", 0.0), ("one weight off", 1e-3), ("NaN on both", 0.0),
                                            ("NaN on one", math.inf)])
def test_weight_divergence_compares_every_process_with_process_0(tmp_path: Path, case: str, expected: float) -> None:
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    workers = [ctx.Process(target=_divergence_worker, args=(rank, str(tmp_path / "store"), case, results))
               for rank in range(2)]
    for w in workers:
        w.start()
    found = dict(results.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert found[0] == found[1] == pytest.approx(expected, rel=1e-4)  # every process gets the all-reduced answer


def _no_labels(tmp_path: Path) -> Path:
    rows = [{k: row[k] for k in ("caption", "jpg_0", "jpg_1")} for row in pickapic_rows(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "nolabels.parquet")
    return tmp_path / "nolabels.parquet"


def _file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("x")
    return tmp_path / "a-file"


BAD_INPUTS = {
    "dataset without labels": (lambda d, p: train_args("sft", _no_labels(p), p / "o"),
                               "missing column(s) label_0, label_1"),
    "unknown stage": (lambda d, p: train_args("ppo", d, p / "o"), "--stage must be one of sft, dpo, rpo"),
    "rpo without CLIP embeddings or model": (
        lambda d, p: train_args("rpo", write_pickapic_parquet(p / "uncached"), p / "o", clip_model="none"),
        "RPO weights need CLIP embeddings"),
    "rpo, clip none and no cache": (lambda d, p: train_args("rpo", d, p / "o", clip_model="none", no_use_cache=True),
                                    "needs CLIP embeddings"),
    "--init a dataset folder": (lambda d, p: train_args("rpo", d, p / "o", init=d),
                                "is not a diffusers pipeline folder"),
    "--init a file": (lambda d, p: train_args("sft", d, p / "o", init=_file(p)), "is not a diffusers pipeline folder"),
    "--init a VAE folder": (lambda d, p: train_args("dpo", d, p / "o", init=ensure_tiny("tiny") / "vae"),
                            "is the config of AutoencoderKL"),
    "--init a missing folder": (lambda d, p: train_args("dpo", d, p / "o", init=p / "no-such-run"), "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case: str, dataset: Path, tmp_path: Path, capsys) -> None:
    make_args, expected = BAD_INPUTS[case]
    code, out, err = cli(make_args(dataset, tmp_path), capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in out + err and not (tmp_path / "o" / "model_index.json").exists()
