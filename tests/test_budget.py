"""`--hours` and `--notebook-minutes`: the recipe sized to a budget (budget.select) on a table shaped
like the real train.csv, the no-argument job's choice of recipe and budget, and the packer's
refusal of a weights dataset whose notebook estimate is over its limit."""
from __future__ import annotations

import re

import pytest

from hms.jobs import budget as B, main_job as M, plan as P
from hms.cli import main
from test_plan import json_line, real_shaped_train, write_tables

RECIPE = sorted(str(p) for p in M.RECIPE_DIR.glob("*.yaml"))
DEMO_CONV1D = "configs/demo/conv1d.yaml"
UNIT = re.compile(r"^    (train    |leave out) (\w+) (seed \d+|full fits) \((\d+) runs\): ([\d.]+) h \(value ([\d.]+)\)$")


@pytest.fixture(scope="module")
def real_shaped(tmp_path_factory):
    return write_tables(tmp_path_factory.mktemp("real_shaped_budget"), real_shaped_train())


def plan_out(capsys, data, work, *args) -> str:
    assert main(["plan", *RECIPE, f"paths.data_dir={data}", f"paths.work_dir={work}", "device=cpu", *args]) == 0
    return capsys.readouterr().out


def units(out: str) -> list[tuple]:
    return [(m[1].strip(), m[2], m[3], int(m[4]), float(m[5]), float(m[6]))
            for m in (UNIT.match(line) for line in out.splitlines()) if m]


def test_a_night_on_one_h200_takes_whole_members_in_value_per_hour_order(real_shaped, tmp_path, capsys):
    out = plan_out(capsys, real_shaped, tmp_path / "work", "--hours", "10", "--on-gpu")
    summary = json_line(out)
    order = units(out)
    # every member's seed 0 first, then full fits, then the second seeds
    n = len(RECIPE)
    assert [u[2] for u in order[:n]] == ["seed 0"] * n
    assert [u[2] for u in order[n:2 * n]] == ["full fits"] * n and [u[2] for u in order[2 * n:]] == ["seed 1"] * 5
    # seed 0 by published value per hour (value = 1.09 - the published KL), best first; value 0 last
    density = [u[5] / u[4] for u in order[:n]]
    assert density == sorted(density, reverse=True)
    assert order[n - 1][1] == "trees_qeeg" and order[n - 1][5] == 0  # no published score
    values = {u[1]: u[5] for u in order}
    assert values["mixnet_xl_mel_zoom"] == pytest.approx(1.09 - 0.29)
    assert values["effnet_b0_two_stage"] == pytest.approx(1.09 - 0.39)
    # whole members only: every chosen seed spans every fold; nothing of a member without its seed 0
    chosen = [u for u in order if u[0] == "train"]
    assert all(u[3] == 5 for u in chosen if u[2].startswith("seed"))
    with_seed0 = {u[1] for u in chosen if u[2] == "seed 0"}
    assert {u[1] for u in chosen} == with_seed0
    assert summary["budget_hours"] == 10 and 0 < summary["budget_used_hours"] <= 10
    assert len(summary["chosen"]) == len(chosen) and len(summary["left_out"]) == len(order) - len(chosen)
    assert "mixnet_xl_mel_zoom" not in with_seed0  # 9.4 h of seed 0 on one H200: left out at 10 h
    # the overrides that make `hms run` train exactly this: n_seeds / full_fits per member
    for name in with_seed0:
        seeds = sum(u[1] == name and u[2].startswith("seed") for u in chosen)
        full = any(u[1] == name and u[2] == "full fits" for u in chosen)
        keys = dict(o.split("=") for o in summary["member_overrides"][name])
        assert int(keys.get("train.n_seeds", 2 if name != "trees_qeeg" else 1)) == seeds
        assert ("train.full_fits" in keys) == (not full)


def test_a_budget_below_the_cheapest_member_trains_nothing(real_shaped, tmp_path, capsys, monkeypatch):
    out = plan_out(capsys, real_shaped, tmp_path / "work", "--hours", "0.01", "--on-gpu")
    assert json_line(out)["chosen"] == [] and "nothing fits" in out
    work = tmp_path / "work2"
    monkeypatch.setenv("HMS_DEVICE", "cpu")
    assert main(["run", DEMO_CONV1D, f"paths.data_dir={real_shaped}", f"paths.work_dir={work}", "--hours", "0.01"]) == 3
    captured = capsys.readouterr()
    assert "below the cheapest member" in captured.err and json_line(captured.out)["chosen"] == []
    assert not (work / "cache").exists() and not any(work.glob("*/fold0"))


def test_hours_all_is_the_whole_plan(real_shaped, tmp_path, capsys):
    whole = json_line(plan_out(capsys, real_shaped, tmp_path / "w1"))
    out = plan_out(capsys, real_shaped, tmp_path / "w2", "--hours", "all")
    every = json_line(out)
    for key in ("runs", "gpu_hours_1", "gpu_hours_n", "hours_here", "members", "kaggle_t4_minutes"):
        assert every[key] == whole[key], key
    assert every["budget_hours"] is None and every["left_out"] == []
    assert sum(u[3] for u in units(out)) == every["runs"] == 66
    assert not any(every["member_overrides"].values())


def test_no_argument_job_with_cuda_and_real_data_trains_to_the_night_budget(real_shaped, tmp_path, monkeypatch,
                                                                           capsys):
    """A fake CUDA device (the H200's figures): instead of stopping over 3 h, the recipe's most valuable
    members that fit 10 h go to training, with the overrides that make it train exactly them."""
    import hms.config
    import hms.jobs.run

    monkeypatch.setenv("HMS_DATA_DIR", str(real_shaped))
    monkeypatch.setenv("HMS_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(hms.config, "resolve_device", lambda cfg: "cuda:0")
    for module in (P, M):  # the plan's throughput key and the main job's first line
        monkeypatch.setattr(module, "device_name", lambda device: "NVIDIA H200")
    asked = []

    class Stop(Exception):
        pass

    def build_once(cfgs):
        asked.extend(cfgs)
        raise Stop

    monkeypatch.setattr(hms.jobs.run, "build_once", build_once)
    with pytest.raises(Stop):
        main(["run"])
    out = capsys.readouterr().out
    assert out.startswith("[hms] CUDA device NVIDIA H200 and the real data")
    assert f"to a budget of {M.NIGHT_HOURS:g} h (one night)" in out.splitlines()[0] and "--hours" in out.splitlines()[0]
    summary = json_line(out)
    assert summary["hours_here"] > M.STOP_HOURS and summary["budget_hours"] == M.NIGHT_HOURS
    assert 0 < summary["budget_used_hours"] <= M.NIGHT_HOURS
    chosen = {label.split()[0] for label in summary["chosen"]}
    assert {c.name for c in asked} == chosen and len(chosen) < len(RECIPE)
    for cfg in asked:  # each trains exactly its chosen seeds and full fits
        labels = [lab for lab in summary["chosen"] if lab.split()[0] == cfg.name]
        assert cfg.train.n_seeds == sum(" seed " in lab for lab in labels)
        assert cfg.train.full_fits == sum(int(re.search(r"\((\d+) runs", lab)[1]) for lab in labels if "full fits" in lab)


def test_on_simulated_data_the_main_job_is_the_demo_on_any_device(tmp_path, real_shaped, tiny_synth):
    from hms.config import synthetic_data_dir

    assert M.is_simulated(tiny_synth) and M.is_simulated(synthetic_data_dir()) and not M.is_simulated(real_shaped)
    job = M.main_job_configs("cuda:0", tiny_synth)
    assert job.files == sorted(str(p) for p in M.DEMO_DIR.glob("*.yaml")) and "hms download" in job.line
    assert job.stop and job.hours is None
    cpu_real = M.main_job_configs("cpu", real_shaped)
    assert cpu_real.files == job.files and cpu_real.stop  # the CPU stops over 3 h, as before
    assert not M.main_job_configs("cpu", real_shaped, yes=True).stop


def test_the_notebook_limit_sets_test_runs_then_tta(real_shaped, tmp_path, capsys):
    free = json_line(plan_out(capsys, real_shaped, tmp_path / "w1"))
    assert free["notebook_choices"] == [] and free["notebook_minutes"] <= B.NOTEBOOK_MINUTES
    tight = json_line(plan_out(capsys, real_shaped, tmp_path / "w2", "--notebook-minutes", "10"))
    assert tight["notebook_choices"][0].endswith("train.test_runs=full")
    assert tight["notebook_minutes"] < free["notebook_minutes"]
    heavy = max((m for m in free["members"] if m != "trees_qeeg"), key=lambda m: free["members"][m]["gpu_hours"])
    assert "train.test_runs=full" in tight["member_overrides"][heavy]
    assert tight["runs"] == free["runs"]  # the notebook limit trains the same runs


def test_the_packer_refuses_a_dataset_over_the_notebook_limit(tmp_path, capsys):
    import json

    from hms.config import load_config, save_resolved

    work, sub = tmp_path / "work", tmp_path / "sub"
    cfg = load_config(["configs/recipe/conv1d_200hz.yaml"])
    for run in ("fold0", "fold1", "full0"):
        (work / cfg.name / run).mkdir(parents=True)
        (work / cfg.name / run / "best.pt").write_bytes(b"weights")
        save_resolved(cfg, work / cfg.name / run / "config.yaml")
    sub.mkdir()
    (sub / "ensemble.json").write_text(json.dumps({"experiments": [cfg.name]}))
    minutes, cut = B.packaged_notebook_minutes(load_config([], [f"paths.work_dir={work}"]), [cfg.name])
    assert P.notebook_prepare_minutes() < minutes < B.NOTEBOOK_MINUTES
    args = ["kaggle", "package", "--dir", str(tmp_path / "dataset"), "--user", "tester", f"paths.work_dir={work}",
            f"paths.submission_dir={sub}", "--notebook-minutes", f"{P.notebook_prepare_minutes() / 2:.3f}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "over the limit" in err and "not packaged" in err and cut in err
    assert not (tmp_path / "dataset").exists()
