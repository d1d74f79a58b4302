from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import shifted_pair, tiny_config

import diffmatch.cli.evaluate as evaluate_cli
import diffmatch.evaluation.methods as methods_module
from diffmatch.evaluation.baselines import DISFlow, FarnebackFlow, Method
from diffmatch.evaluation.datasets import EvalSubset
from diffmatch.evaluation.methods import MethodOptions, build_methods
from diffmatch.evaluation.report import summarize_records, write_outputs
from diffmatch.evaluation.runner import run_evaluation
from diffmatch.io import load_image
from diffmatch.result import MatchResult


class StandInMatcher:
    """Same ``match``/``match_raw`` signatures as ``DiffMatcher``: DIS plus seeded noise per sample."""

    def __init__(self) -> None:
        self.dis = DISFlow()
        self.calls: list[dict] = []

    def match(
        self, source, target, num_samples=3, num_steps=5, generator=None, refine=None, two_pass=None, layer_search=None
    ) -> MatchResult:
        self.calls.append({"refine": refine, "two_pass": two_pass, "layer_search": layer_search})
        base = self.dis(source, target).flow
        noise = torch.randn((base.shape[0], num_samples, *base.shape[1:]), generator=generator)
        return MatchResult.from_samples(base.unsqueeze(1) + noise)

    def match_raw(self, source, target, mode="hard", refine=False) -> MatchResult:
        assert mode in ("hard", "soft")
        return self.dis(source, target)


class FlakyMethod:
    """Fails on the second pair it sees."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, source, target) -> MatchResult:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("simulated failure\nwith a second line")
        return MatchResult.from_samples(torch.zeros(1, 1, 2, *target.shape[-2:]))


def _shift_items(photo: np.ndarray, count: int = 3) -> list[dict]:
    items = []
    for index in range(count):
        source, target, flow = shifted_pair(photo, 2 + index, -1)
        items.append(
            {
                "source": source[0],
                "target": target[0],
                "flow": flow[0],
                "mask": torch.ones(64, 64, dtype=torch.bool),
                "name": f"shift{index}",
            }
        )
    return items


@pytest.mark.parametrize("method", [DISFlow(), FarnebackFlow()])
def test_opencv_flow_direction_recovers_a_shift(photo, method):
    source, target, flow = shifted_pair(photo, 3, -2)
    assert isinstance(method, Method)
    result = method(source, target)
    assert result.flow.shape == (1, 2, 64, 64) and result.samples.shape == (1, 1, 2, 64, 64)
    inner = result.flow[0, :, 16:48, 16:48].mean(dim=(1, 2))
    assert torch.allclose(inner, flow[0, :, 0, 0], atol=0.1)  # (-3, +2): target(x) = source(x + flow)


def test_opencv_flow_maps_back_to_a_larger_source(photo):
    source, target, flow = shifted_pair(photo, 3, -2)
    big = F.interpolate(source, scale_factor=2, mode="bilinear", align_corners=False)
    result = DISFlow()(big, target)
    xs = torch.arange(64.0).view(1, 64)
    expected_x = (xs + flow[0, 0, 0, 0] + 0.5) * 2 - 0.5 - xs  # source pixels of the 2x image
    assert (result.flow[0, 0, 16:48, 16:48] - expected_x[:, 16:48]).abs().mean() < 0.3


def test_runner_keeps_going_after_a_failed_pair(photo, tmp_path):
    warnings: list[str] = []
    subsets = [EvalSubset(_shift_items(photo), {"level": "easy"})]
    records = run_evaluation([FlakyMethod(), DISFlow()], subsets, torch.device("cpu"), warn=warnings.append)
    assert [r.error is None for r in records if r.method == "flaky"] == [True, False, True]
    assert all(r.error is None for r in records if r.method == "dis")
    assert len(warnings) == 1 and "\n" not in warnings[0] and "simulated failure" in warnings[0]
    results = summarize_records(records)
    assert results["flaky"]["all"]["num_pairs"] == 2 and results["flaky"]["all"]["num_failed"] == 1
    assert results["dis"]["easy"]["pck1"] > 0.9
    write_outputs(tmp_path, {"results": results, "corruptions": []}, records)
    rows = list(csv.DictReader(open(tmp_path / "per_pair.csv")))
    assert len(rows) == 6 and sum(bool(row["error"]) for row in rows) == 1


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = evaluate_cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_synthetic_dis_farneback_clean(tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, stderr = _run(
        [
            "--dataset",
            "synthetic",
            "--methods",
            "dis,farneback",
            "--limit",
            "2",
            "--corruptions",
            "none",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threads"] == 1  # conftest pins OMP_NUM_THREADS=1: the count a run's last bits depend on
    for method in ("dis", "farneback"):
        assert list(summary["results"][method]) == ["all", "easy", "medium", "hard"]
        group = summary["results"][method]["all"]
        assert group["num_pairs"] == 6 and group["num_failed"] == 0
        assert group["aepe"] > 0 and 0 <= group["pck1"] <= group["pck3"] <= group["pck5"] <= 1
        assert group["seconds_per_pair"] > 0 and group["ause_epe"] is None
        # Easier viewpoint change, smaller error.
        assert summary["results"][method]["easy"]["aepe"] < summary["results"][method]["hard"]["aepe"]
    rows = list(csv.DictReader(open(out / "per_pair.csv")))
    assert len(rows) == 12 and {row["level"] for row in rows} == {"easy", "medium", "hard"}
    assert load_image(out / "sparsification.png").shape[0] > 100
    assert not (out / "corruptions.png").exists()
    assert "dis" in stdout and "medium" in stdout and "AEPE" in stdout


def test_cli_corruption_list_groups_per_type(tmp_path, capsys):
    out = tmp_path / "eval"
    argv = [
        "--dataset",
        "synthetic",
        "--methods",
        "dis",
        "--limit",
        "1",
        "--corruptions",
        "gaussian_noise,brightness",
    ]
    code, _, stderr = _run([*argv, "--severity", "3", "--out", str(out)], capsys)
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    groups = summary["results"]["dis"]
    assert list(groups) == ["all", "easy", "medium", "hard", "gaussian_noise", "brightness"]
    assert groups["all"]["num_pairs"] == 6 and groups["gaussian_noise"]["num_pairs"] == 3
    assert summary["corruptions"] == ["gaussian_noise", "brightness"] and summary["severity"] == 3
    rows = list(csv.DictReader(open(out / "per_pair.csv")))
    assert {row["corruption"] for row in rows} == {"gaussian_noise", "brightness"}
    assert load_image(out / "corruptions.png").shape[0] > 100


def test_a_pairs_sampling_does_not_depend_on_the_pairs_before_it(photo):
    from diffmatch.evaluation.methods import CheckpointMethod, pair_seed

    items = _shift_items(photo)
    pairs = [(item["source"][None], item["target"][None]) for item in items]
    method = CheckpointMethod(StandInMatcher(), 3, None, seed=5)
    after_others = [method(*pair).samples for pair in pairs][-1]
    alone = CheckpointMethod(StandInMatcher(), 3, None, seed=5)(*pairs[-1]).samples
    assert torch.equal(after_others, alone)
    # Another pair, or another seed, draws other noise.
    assert len({pair_seed(5, *pair) for pair in pairs} | {pair_seed(6, *pairs[-1])}) == 4
    other_seed = CheckpointMethod(StandInMatcher(), 3, None, seed=6)(*pairs[-1]).samples
    assert not torch.allclose(other_seed, alone)


def test_cli_checkpoint_and_raw_corr_with_a_stand_in_matcher(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(methods_module, "_load_diffmatcher", lambda options: StandInMatcher())
    out = tmp_path / "eval"
    argv = ["--dataset", "synthetic", "--methods", "checkpoint,raw-corr", "--limit", "1", "--samples", "4"]
    code, stdout, stderr = _run([*argv, "--device", "cpu", "--out", str(out)], capsys)
    assert code == 0, stderr
    results = json.loads((out / "summary.json").read_text())["results"]
    assert results["checkpoint"]["all"]["ause_epe"] >= 0 and results["checkpoint"]["all"]["ause_pck"] >= 0
    assert len(results["checkpoint"]["all"]["sparsification"]["epe"]) == 51
    assert results["raw-corr"]["all"]["ause_epe"] is None  # one sample: no uncertainty
    assert "checkpoint" in stdout


def test_checkpoint_methods_pass_their_switches_to_the_matcher(photo, monkeypatch):
    stand_in = StandInMatcher()
    monkeypatch.setattr(methods_module, "_load_diffmatcher", lambda options: stand_in)
    names = ["checkpoint", "checkpoint-layer-search", "checkpoint-no-layer-search", "checkpoint-one-pass", "checkpoint-unrefined"]
    source, target, _ = shifted_pair(photo, 2, -1)
    for method in build_methods(names, MethodOptions()):
        method(source, target)
    assert stand_in.calls == [
        {"refine": None, "two_pass": None, "layer_search": None},
        {"refine": None, "two_pass": None, "layer_search": True},
        {"refine": None, "two_pass": None, "layer_search": False},
        {"refine": None, "two_pass": False, "layer_search": None},
        {"refine": False, "two_pass": False, "layer_search": False},  # the model's flow as it is
    ]


def test_cli_runs_the_real_diffmatcher_from_a_tiny_checkpoint(tmp_path, capsys):
    from diffmatch.models.diffmatch import DiffMatch
    from diffmatch.models.weights import FORMAT, VERSION

    config = tiny_config()
    weights = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    state = DiffMatch(config).state_dict()
    torch.save(
        {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "state_dict": state}, weights
    )
    out = tmp_path / "eval"
    methods = "checkpoint,checkpoint-unrefined,checkpoint-torch-solver,raw-corr-soft,raw-corr-soft-refined"
    argv = ["--dataset", "synthetic", "--methods", methods, "--checkpoint", str(weights)]
    code, _, stderr = _run(
        [*argv, "--limit", "1", "--samples", "2", "--steps", "2", "--out", str(out)], capsys
    )
    assert code == 0, stderr
    results = json.loads((out / "summary.json").read_text())["results"]
    assert (
        results["checkpoint"]["all"]["num_pairs"] == 3
        and results["checkpoint"]["all"]["ause_epe"] is not None
    )
    assert results["raw-corr-soft"]["all"]["ause_epe"] is None
    # F_init brought to full precision: the same soft-argmax flow, refined, is a different (better) flow.
    refined, raw = results["raw-corr-soft-refined"]["all"]["aepe"], results["raw-corr-soft"]["all"]["aepe"]
    assert refined < raw
    # Same draws, refined or not: the refinement changes the flow.
    assert results["checkpoint-unrefined"]["all"]["num_pairs"] == 3
    assert results["checkpoint-unrefined"]["all"]["aepe"] != results["checkpoint"]["all"]["aepe"]
    # The refinement's two solvers run the same iteration: the same flows, whichever refines.
    assert results["checkpoint-torch-solver"]["all"]["aepe"] == pytest.approx(results["checkpoint"]["all"]["aepe"], abs=1e-3)


@pytest.mark.slow
def test_cli_zero_shot_dino_from_a_tiny_local_model(tmp_path, capsys):
    from zeroshot_fixtures import make_tiny_dino

    dino = make_tiny_dino(tmp_path / "dino")
    out = tmp_path / "eval"
    argv = ["--dataset", "synthetic", "--methods", "dino", "--dino-model", str(dino), "--limit", "1"]
    code, _, stderr = _run([*argv, "--out", str(out)], capsys)
    assert code == 0, stderr
    assert json.loads((out / "summary.json").read_text())["results"]["dino"]["all"]["num_pairs"] == 3


def test_cli_failed_pairs_give_nonzero_exit_but_full_outputs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluate_cli, "build_methods", lambda names, options: [FlakyMethod()])
    out = tmp_path / "eval"
    code, _, stderr = _run(
        ["--dataset", "synthetic", "--methods", "dis", "--limit", "1", "--out", str(out)], capsys
    )
    assert code == 1
    assert "simulated failure" in stderr and "1 of 3" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"]["flaky"]["all"]["num_pairs"] == 2 and len(summary["failures"]) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "synthetic", "--methods", "orb"], "unknown method 'orb'"),
        (["--dataset", "kitti", "--methods", "dis"], "unknown dataset 'kitti'"),
        (["--dataset", "hpatches", "--methods", "dis"], "--dataset hpatches needs --root"),
        (["--dataset", "eth3d", "--root", "/nonexistent/eth3d", "--methods", "dis"], "/nonexistent/eth3d"),
        (
            ["--dataset", "synthetic", "--methods", "dis", "--corruptions", "rain"],
            "unknown corruption 'rain'",
        ),
        (["--dataset", "synthetic", "--methods", "dis", "--severity", "7"], "severity"),
        (["--dataset", "synthetic", "--methods", "dis", "--limit", "0"], "--limit"),
        (["--dataset", "synthetic", "--methods", "dis", "--device", "tpu"], "--device"),
        (["--dataset", "synthetic", "--methods", "dis", "--samples", "x"], "--samples"),
        (["--dataset", "scenes", "--methods", "dis", "--pose-matches", "2"], "--pose-matches must be >= 5"),
        (["--dataset", "scenes", "--methods", "dis", "--pose-threshold", "0"], "--pose-threshold > 0"),
        (["--dataset", "scenes", "--methods", "dis", "--pose-trials", "0"], "--pose-trials >= 1"),
        (["--dataset", "scenes", "--methods", "dis", "--pose-repeats", "0"], "--pose-repeats >= 1"),
        (
            ["--dataset", "synthetic", "--methods", "checkpoint", "--checkpoint", "/nonexistent.pt"],
            "checkpoint not found",
        ),
    ],
)
def test_cli_bad_input_is_one_line_error(tmp_path, capsys, argv, message):
    try:
        code = evaluate_cli.main([*argv, "--out", str(tmp_path / "eval")])
    except SystemExit as exit_:  # argparse's own checks (types, required flags)
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_module_entry_point_bad_root_has_no_traceback(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "diffmatch.evaluate",
        "--dataset",
        "generic",
        "--root",
        str(tmp_path / "missing.txt"),
    ]
    proc = subprocess.run(
        [*cmd, "--methods", "dis", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "missing.txt" in proc.stderr


def test_cli_scenes_reports_dense_and_pose_metrics_per_level(tmp_path, capsys):
    out = tmp_path / "scenes"
    code, stdout, stderr = _run(["--dataset", "scenes", "--methods", "dis", "--limit", "1", "--out", str(out)], capsys)
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["results"]["dis"]) == ["all", "stereo", "medium", "wide"]
    for group in summary["results"]["dis"].values():
        assert group["num_poses"] == group["num_pairs"] and group["aepe"] > 0
        assert 0 <= group["pose_auc5"] <= group["pose_auc10"] <= group["pose_auc20"] <= 1
        assert group["pose_repeats"] == 5 and group["pose_auc10_std"] >= 0
    rows = list(csv.DictReader(open(out / "per_pair.csv")))
    assert len(rows) == 3 and all(float(row["pose_error"]) >= 0 for row in rows)
    assert all(row["pose_errors"].split(";")[0] == row["pose_error"] for row in rows)
    assert all(len(row["pose_errors"].split(";")) == 5 for row in rows)
    assert "AUC@10" in stdout and "wide" in stdout


class _ExactSparse:
    """A sparse 'matcher' that returns the true matches of posed items (set per item by the test)."""

    name = "exact"

    def __init__(self) -> None:
        self.matches = None

    def __call__(self, source, target) -> MatchResult:
        from diffmatch.result import SparseMatches

        result = MatchResult.from_samples(torch.zeros(1, 1, 2, *target.shape[-2:]))
        result.matches = [SparseMatches(*self.matches)]
        return result


def test_runner_scores_poses_of_pairs_without_ground_truth_flow():
    from diffmatch.evaluation.runner import evaluate_pair
    from diffmatch.metrics import summarize

    rng = np.random.default_rng(0)
    k = torch.tensor([[200.0, 0, 63.5], [0, 200.0, 47.5], [0, 0, 1]], dtype=torch.float64)
    rotation = torch.tensor([[0.98, 0.0, 0.199], [0.0, 1.0, 0.0], [-0.199, 0.0, 0.98]], dtype=torch.float64)
    rotation = torch.linalg.svd(rotation)[0] @ torch.linalg.svd(rotation)[2]  # nearest rotation
    translation = torch.tensor([-1.0, 0.05, 0.1], dtype=torch.float64)
    points = torch.from_numpy(np.stack([rng.uniform(-2, 2, 300), rng.uniform(-1.5, 1.5, 300), rng.uniform(6, 10, 300)], 1))
    tgt = points @ k.T
    src = (points @ rotation.T + translation) @ k.T
    matcher = _ExactSparse()
    matcher.matches = (
        (tgt[:, :2] / tgt[:, 2:]).float().numpy(),
        (src[:, :2] / src[:, 2:]).float().numpy(),
        np.ones(300, np.float32),
    )
    image = torch.zeros(3, 96, 128)
    item = {"source": image, "target": image, "K_source": k, "K_target": k, "R": rotation, "t": translation}
    metrics = evaluate_pair(matcher, item, torch.device("cpu"))
    assert metrics.num_pixels == 0 and math.isnan(metrics.aepe)
    assert metrics.pose_error < 0.05
    # No pose from too few matches: an infinite error, not a failure.
    matcher.matches = tuple(m[:3] for m in matcher.matches)
    failed = evaluate_pair(matcher, item, torch.device("cpu"))
    assert failed.pose_error == math.inf
    assert summarize([metrics, failed])["pose_auc5"] == pytest.approx(0.5, abs=0.01)


def _posed_scene_item(h: int = 96, w: int = 128) -> dict:
    """A pair of two fronto-parallel planes seen by a moving camera: exact flow, cameras and pose."""
    k = np.array([[120.0, 0, w / 2], [0, 120.0, h / 2], [0, 0, 1]])
    angle = 0.1
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    translation = np.array([0.5, 0.05, 0.1])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = np.where(xs < w * 0.6, 4.0, 9.0)
    points = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(k).T * depth[..., None]
    projected = (points @ rotation.T + translation) @ k.T
    flow = torch.from_numpy(projected[..., :2] / projected[..., 2:] - np.stack([xs, ys], -1)).permute(2, 0, 1).float()
    image = torch.zeros(3, h, w)
    return {"source": image, "target": image, "flow": flow, "mask": torch.ones(h, w, dtype=torch.bool),
            "K_source": k, "K_target": k, "R": rotation, "t": translation}


def test_runner_repeats_the_pose_with_seeds_in_turn():
    from diffmatch.evaluation.runner import PoseOptions, evaluate_pair, pair_pose_error

    item = _posed_scene_item()
    method = lambda s, t: MatchResult.from_samples(item["flow"][None, None] + 0.3 * torch.randn(1, 1, 2, *item["flow"].shape[-2:], generator=torch.Generator().manual_seed(5)))  # noqa: E731
    options = PoseOptions(num_matches=300, trials=1, repeats=3, seed=7)
    metrics = evaluate_pair(method, item, torch.device("cpu"), options)
    assert len(metrics.pose_repeats) == 3 and metrics.pose_repeats[0] == metrics.pose_error
    # Repeat r is the estimate seeded with seed + r; the draws differ, so do the errors.
    result = method(None, None)
    assert metrics.pose_repeats[2] == max(pair_pose_error(result, item, PoseOptions(300, seed=9, trials=1, repeats=1)))
    assert len(set(metrics.pose_repeats)) == 3
    with pytest.raises(ValueError, match="repeats >= 1"):
        PoseOptions(repeats=0)


# ------------------------------------------------------------------ checked before the work (#29)
def test_out_that_is_a_file_is_refused_before_the_benchmark_runs(tmp_path, capsys):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    # The checkpoint does not exist: an --out check made after loading would report that instead.
    argv = ["--dataset", "synthetic", "--methods", "checkpoint", "--checkpoint", str(tmp_path / "missing.pt"),
            "--out", str(blocker)]
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"error: --out {blocker}: exists and is not a folder"]


def test_steps_beyond_the_model_are_refused_before_any_pair(tmp_path, checkpoint, capsys):
    out = tmp_path / "eval"
    code, stdout, err = _run(["--dataset", "synthetic", "--methods", "checkpoint", "--checkpoint", str(checkpoint),
                              "--steps", "9", "--limit", "1", "--out", str(out)], capsys)
    assert code == 2 and stdout == ""
    assert err.strip().splitlines() == ["error: --steps must be in [1, 5] for this model, got 9"]
    assert not out.exists()


def test_evaluate_confidence_checks_out_before_loading(tmp_path, capsys):
    from diffmatch.cli.evaluate_confidence import main as confidence_main

    blocker = tmp_path / "f"
    blocker.write_text("x")
    code = confidence_main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(blocker)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: --out {blocker}: exists and is not a folder"]


def test_evaluate_confidence_needs_a_calibrated_checkpoint(tmp_path, checkpoint, capsys):
    from diffmatch.cli.evaluate_confidence import main as confidence_main

    code = confidence_main(["--checkpoint", str(checkpoint), "--limit", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has no confidence calibration" in err[0], err
    assert not (tmp_path / "o").exists()


def test_evaluate_confidence_matches_in_two_passes_on_the_scenes(tmp_path, capsys):
    import json

    from diffmatch.cli.evaluate_confidence import main as confidence_main
    from diffmatch.confidence import fit_calibrator
    from diffmatch.models.diffmatch import DiffMatch
    from diffmatch.models.weights import save_weights
    from tests.helpers import synthetic_cues, tiny_config

    torch.manual_seed(0)
    cues, errors = synthetic_cues(2000)
    calibration = fit_calibrator(cues, errors, info={"photos": "test"}, refined=True).to_dict()
    checkpoint = save_weights(DiffMatch(tiny_config()).eval(), tmp_path / "cal.pt", calibration=calibration)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(checkpoint), "--dataset", "scenes", "--limit", "1", "--samples", "2", "--steps", "1",
            "--out", str(out)]  # two-pass matching, DiffMatcher's default
    assert confidence_main(argv) == 0
    results = json.loads((out / "summary.json").read_text())["results"]
    assert set(results) == {"all", "stereo", "medium", "wide"} and results["all"]["pairs"] == 3
    for tau in ("1", "3", "5"):  # one two-pass match per τ, each with its own confidence
        calibration = results["all"]["calibration"][tau]
        assert 0 <= calibration["ece"] <= 1 and 0 < calibration["mean_confidence"] < 1
    assert results["all"]["homography"] == {}  # 3D scenes have no homography truth
    table = capsys.readouterr().out
    assert "ECE τ=3" in table and "corner error" not in table


def test_evaluate_confidence_layer_search_runs_in_every_match(tmp_path, monkeypatch):
    import diffmatch.matcher as matcher_module
    from diffmatch.cli.evaluate_confidence import main as confidence_main
    from diffmatch.confidence import fit_calibrator
    from diffmatch.models.diffmatch import DiffMatch
    from diffmatch.models.weights import save_weights
    from tests.helpers import synthetic_cues, tiny_config

    torch.manual_seed(0)
    cues, errors = synthetic_cues(2000)
    calibration = fit_calibrator(cues, errors, info={"photos": "test"}, refined=True).to_dict()
    checkpoint = save_weights(DiffMatch(tiny_config()).eval(), tmp_path / "cal.pt", calibration=calibration)
    calls = []
    search = matcher_module.search_layers
    # Each match's first round searches with the global cost's planes (max_layers > 0); a second
    # round, with the confident matches' planes alone, follows where the first took pixels.
    monkeypatch.setattr(matcher_module, "search_layers", lambda *a: calls.append(a[5].max_layers > 0) or search(*a))
    argv = ["--checkpoint", str(checkpoint), "--limit", "1", "--samples", "2", "--steps", "1", "--one-pass"]
    assert confidence_main([*argv, "--no-layer-search", "--out", str(tmp_path / "plain")]) == 0 and not calls
    assert confidence_main([*argv, "--out", str(tmp_path / "searched")]) == 0  # the default: searched
    assert sum(calls) == 3 * 3  # three pairs (one per level), one match per calibrated τ
    assert confidence_main([*argv, "--layer-search", "--out", str(tmp_path / "again")]) == 0  # old scripts
    assert sum(calls) == 2 * 3 * 3
