"""The MD runner and ``matsim md``: a short run with a tiny model writes every output; a killed run resumed from its
checkpoint matches an uninterrupted one; the watchdog stops a blow-up and keeps the last good frame; user mistakes
end in one line and a non-zero exit.

Where only the runner matters, the potential is ASE's Lennard-Jones on a small argon box (fast and deterministic).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.lj import LennardJones

from matsim.core.errors import CheckpointError, ConfigError
from matsim.md.config import MDConfig, load_md_config
from matsim.md.runner import MDBlowUp, analyze_output, run_md
from matsim.md.thermo import THERMO_COLUMNS

LJ_ARGON = dict(sigma=3.4, epsilon=0.0104, rc=7.0, smooth=True)


def _lj() -> LennardJones:
    return LennardJones(**LJ_ARGON)


@pytest.fixture()
def argon(tmp_path: Path) -> Path:
    """32 argon atoms, fcc near the liquid density, slightly rattled, as an extxyz file."""
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    path = tmp_path / "argon.extxyz"
    ase.io.write(path, atoms)
    return path


def _argon_config(structure: Path, nvt: dict | None = None, **extra) -> MDConfig:
    data = dict(
        structure=str(structure),
        stages=[dict(kind="minimise", steps=10, fmax=0.01),
                dict(kind="npt", steps=12, timestep_fs=5.0, temperature_K=90.0, barostat="mtk", pdamp_fs=500.0),
                dict(kind="nvt", steps=20, timestep_fs=5.0, temperature_K=90.0, **(nvt or {}))],
        output=dict(thermo_every=2, trajectory_every=3, checkpoint_every=5, progress=False),
        analysis=dict(enabled=False),
        seed=3,
    )
    data.update(extra)
    return MDConfig.model_validate(data)


class _KilledCalculator(LennardJones):
    """Lennard-Jones that dies like a killed process after ``n`` evaluations."""

    def __init__(self, n: int) -> None:
        super().__init__(**LJ_ARGON)
        self.n, self.calls = n, 0

    def calculate(self, *args, **kwargs) -> None:
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt
        super().calculate(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised one-layer bamboo for H, Li, C, O, F, P and Ar, saved as a checkpoint."""
    import matsim.models

    model = matsim.models.create("bamboo", cutoff=4.0, species=[1, 3, 6, 8, 9, 15, 18], channels=8, num_layers=1,
                                 num_heads=2)
    return matsim.models.save_model(model, tmp_path_factory.mktemp("model") / "tiny.pt")


# ------------------------------------------------------------------------------------------------ a short run


def test_short_run_with_a_tiny_model_writes_every_output(tmp_path: Path, tiny_model: Path) -> None:
    checkpoint = tiny_model
    config = MDConfig.model_validate(dict(
        system=dict(solvents=[dict(name="EC"), dict(name="DMC")], ratio_basis="mass",
                    salts=[dict(name="LiPF6", concentration=1.0)], n_atoms=120, seed=1),
        model=str(checkpoint), device="cpu", dtype="float64",
        stages=[dict(kind="minimise", steps=3),
                dict(kind="npt", steps=4, timestep_fs=0.25, temperature_K=300.0),
                dict(kind="nvt", steps=16, timestep_fs=0.25, temperature_K=300.0, thermostat="bussi")],
        output=dict(thermo_every=2, trajectory_every=1, checkpoint_every=8, progress=False),
        analysis=dict(n_blocks=2),
    ))
    out = tmp_path / "run"
    result = run_md(config, out)
    for name in ("config.yaml", "initial.extxyz", "minimised.extxyz", "final.extxyz", "thermo.csv",
                 "trajectory.extxyz", "checkpoint.npz", "run.json", "analysis.json", "plots/thermo.png",
                 "plots/msd.png"):
        assert (out / name).is_file(), name
    assert MDConfig.model_validate(yaml.safe_load((out / "config.yaml").read_text())) == config
    initial = ase.io.read(out / "initial.extxyz")
    assert {"mol_id", "formal_charge"} <= set(initial.arrays) and initial.arrays["formal_charge"].sum() == 0

    rows = list(csv.DictReader(open(out / "thermo.csv")))
    assert tuple(rows[0]) == THERMO_COLUMNS
    md_rows = [r for r in rows if r["stage"] != "minimise"]
    assert [r["stage"] for r in md_rows] == ["npt"] * 2 + ["nvt"] * 8
    assert float(md_rows[-1]["time_fs"]) == pytest.approx(5.0)
    for r in md_rows:
        assert 100.0 < float(r["T_K"]) < 900.0 and 1.0 < float(r["density_g_cm3"]) < 1.6
        assert np.isfinite(float(r["P_bar"])) and float(r["etot_eV"]) == pytest.approx(
            float(r["epot_eV"]) + float(r["ekin_eV"]))
    assert all(r["conserved_eV"] for r in md_rows if r["stage"] == "nvt")  # Bussi's conserved energy

    frames = ase.io.read(out / "trajectory.extxyz", index=":")
    assert [f.info["stage"] for f in frames] == ["npt"] * 4 + ["nvt"] * 16
    last = frames[-1]
    assert {"momenta", "mol_id", "formal_charge"} <= set(last.arrays)
    assert last.calc.results["forces"].shape == (len(last), 3) and last.calc.results["stress"].shape == (6,)
    assert last.info["step"] == result.steps
    summary = json.loads((out / "analysis.json").read_text())
    assert summary["stage"] == "nvt" and summary["n_frames"] == 16
    assert {"Li", "PF6", "EC", "DMC"} <= set(summary["diffusion_cm2_s"])
    assert "einstein" in summary["conductivity_mS_cm"] and "viscosity_mPa_s" in summary
    assert summary["topology"]["intact"] and "warnings" not in summary
    assert {"Li", "PF6", "EC", "DMC"} <= set(summary["topology"]["molecules"])
    timings = json.loads((out / "run.json").read_text())["stages"]
    assert [t["stage"] for t in timings] == ["minimise", "npt", "nvt"] and timings[-1]["ns_per_day"] > 0
    assert [t["steps"] for t in timings] == [result.steps - 20, 4, 16]  # the steps taken, also by the minimiser


# ---------------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("thermostat, barostat", [("nose-hoover-chain", "mtk"), ("langevin", "berendsen")])
def test_a_killed_run_resumes_exactly(tmp_path: Path, argon: Path, thermostat: str, barostat: str) -> None:
    config = _argon_config(argon, nvt=dict(thermostat=thermostat))
    config.stages[1].barostat = barostat
    run_md(config, tmp_path / "straight", calculator=_lj())
    # killed in the NPT stage, resumed, killed again in the NVT stage between checkpoints, resumed to the end
    with pytest.raises(KeyboardInterrupt):
        run_md(config, tmp_path / "killed", calculator=_KilledCalculator(17))
    with pytest.raises(KeyboardInterrupt):
        run_md(config, tmp_path / "killed", resume=True, calculator=_KilledCalculator(16))
    run_md(config, tmp_path / "killed", resume=True, calculator=_lj())

    straight, resumed = (ase.io.read(tmp_path / d / "final.extxyz") for d in ("straight", "killed"))
    np.testing.assert_allclose(resumed.positions, straight.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(resumed.get_momenta(), straight.get_momenta(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(resumed.cell.array, straight.cell.array, rtol=0, atol=1e-10)
    # rows and frames written after the last checkpoint by the killed run are not duplicated
    assert (tmp_path / "killed/thermo.csv").read_text() == (tmp_path / "straight/thermo.csv").read_text()
    a = ase.io.read(tmp_path / "straight/trajectory.extxyz", index=":")
    b = ase.io.read(tmp_path / "killed/trajectory.extxyz", index=":")
    assert [f.info["step"] for f in b] == [f.info["step"] for f in a]
    np.testing.assert_allclose(b[-1].positions, a[-1].positions, rtol=0, atol=1e-10)


def test_a_finished_stage_can_be_extended(tmp_path: Path, argon: Path) -> None:
    config = _argon_config(argon)
    run_md(config, tmp_path / "long", calculator=_lj())
    config.stages[2].steps = 10
    run_md(config, tmp_path / "short", calculator=_lj())
    config.stages[2].steps = 20
    run_md(config, tmp_path / "short", resume=True, calculator=_lj())
    long, extended = (ase.io.read(tmp_path / d / "final.extxyz") for d in ("long", "short"))
    np.testing.assert_allclose(extended.positions, long.positions, rtol=0, atol=1e-10)


def test_resume_needs_a_checkpoint_and_the_same_system(tmp_path: Path, argon: Path) -> None:
    config = _argon_config(argon)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_md(config, tmp_path / "empty", resume=True, calculator=_lj())
    config.stages = config.stages[:1]
    run_md(config, tmp_path / "done", calculator=_lj())
    with pytest.raises(ConfigError, match="already holds a run"):
        run_md(config, tmp_path / "done", calculator=_lj())
    with pytest.raises(ConfigError, match="another system"):
        run_md(config.model_copy(update={"model": "other"}), tmp_path / "done", resume=True, calculator=_lj())


def test_analyze_output_reruns_with_overrides(tmp_path: Path, argon: Path) -> None:
    config = _argon_config(argon, output=dict(thermo_every=5, trajectory_every=1, progress=False))
    run_md(config, tmp_path / "run", calculator=_lj())
    summary = analyze_output(tmp_path / "run", overrides=("analysis.n_blocks=2", "analysis.include=[msd]"))
    assert summary["stage"] == "nvt" and summary["n_frames"] == 20
    assert "Ar" in summary["diffusion_cm2_s"] and "viscosity_mPa_s" not in summary and "rdf" not in summary
    assert (tmp_path / "run/plots/msd.png").is_file()


# -------------------------------------------------------------------------------------------------- watchdog


def test_watchdog_stops_a_blow_up_and_keeps_the_last_good_frame(tmp_path: Path, argon: Path) -> None:
    config = _argon_config(argon, watchdog=dict(check_every=2))
    config.stages = [config.stages[0], config.stages[2]]
    config.stages[1].timestep_fs = 5.0
    config.stages[1].temperature_K = 30.0  # 5 fs is fine at 30 K; at 3000 K it explodes
    config.stages[1].steps = 60
    out = tmp_path / "run"
    hot = config.model_copy(deep=True)
    hot.stages[1].temperature_K = 3000.0
    hot.watchdog.max_force = 1.0
    with pytest.raises(MDBlowUp, match=r"watchdog stopped the run at step \d+ \(stage nvt\): (force|temperature|atoms)"
                       ) as error:
        run_md(hot, out, calculator=_lj())
    assert "last_good.extxyz" in str(error.value)
    good = ase.io.read(out / "last_good.extxyz")
    assert good.info["stage"] == "nvt" and np.isfinite(good.positions).all() and good.has("momenta")
    assert (out / "thermo.csv").read_text().count("\n") >= 2  # output written before the blow-up stays

    run_md(config, tmp_path / "calm", calculator=_lj())
    assert not (tmp_path / "calm/last_good.extxyz").exists()


def test_watchdog_catches_nan(tmp_path: Path, argon: Path) -> None:
    class NaNAfter(LennardJones):
        calls = 0

        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            NaNAfter.calls += 1
            if NaNAfter.calls > 8:
                self.results["forces"] = np.full_like(self.results["forces"], np.nan)

    config = _argon_config(argon)
    config.stages = config.stages[2:]
    with pytest.raises(MDBlowUp, match="non-finite forces"):
        run_md(config, tmp_path / "run", calculator=NaNAfter(**LJ_ARGON))
    assert (tmp_path / "run/last_good.extxyz").is_file()


# ---------------------------------------------------------------------------------------------------- config


def test_config_defaults_and_validation(tmp_path: Path, argon: Path) -> None:
    config = _argon_config(argon)
    assert config.stages[2].resolved_thermostat == "nose-hoover-chain"
    assert config.stages[1].tdamp_fs == 100.0 and config.stages[2].friction_per_fs == 0.01
    assert MDConfig.model_validate(dict(structure="x", stages=[dict(kind="npt", steps=1, temperature_K=300)])
                                   ).stages[0].barostat == "berendsen"
    assert config.stage_names() == ["minimise", "npt", "nvt"]
    twice = MDConfig.model_validate(dict(structure="x", stages=[dict(kind="nvt", steps=1, temperature_K=1)] * 2))
    assert twice.stage_names() == ["nvt1", "nvt2"]
    for bad, match in [
        (dict(stages=[dict(kind="nvt", steps=1, temperature_K=1)]), "exactly one of 'system'"),
        (dict(structure="x", stages=[dict(kind="nvt", steps=1)]), "needs temperature_K"),
        (dict(structure="x", stages=[dict(kind="npt", steps=1, temperature_K=1, thermostat="langevin")]),
         "brings its own thermostat"),
    ]:
        with pytest.raises(ConfigError, match=match):
            from matsim.core.config import validate_config

            validate_config(MDConfig, bad)
    # a relative structure path is relative to the YAML file
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(dict(structure=argon.name, stages=[dict(kind="minimise", steps=1)])))
    assert load_md_config(path).structure == argon


# ------------------------------------------------------------------------------------------------------- CLI


@pytest.fixture()
def cli():
    """``matsim.cli.app.main`` with ``md`` registered (temporarily, if app.py does not register it yet)."""
    from matsim.cli import app as app_module
    from matsim.cli.md import md_app

    registered = any(g.name == "md" for g in app_module.app.registered_groups)
    if not registered:
        app_module.app.add_typer(md_app, name="md")

    def call(args: list[str]) -> int:
        try:
            app_module.main(args)
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    yield call
    if not registered:
        app_module.app.registered_groups[:] = [g for g in app_module.app.registered_groups if g.name != "md"]


def _write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("data, message", [
    (dict(structure="argon.extxyz", stages=[dict(kind="nvt", steps=1, temperature_K=1)], thermostat="nhc"),
     "thermostat: unknown key"),
    (dict(structure="argon.extxyz", stages=[dict(kind="equilibrate", steps=1)]),
     "stages.0.kind: 'equilibrate' is not allowed"),
    (dict(structure="missing.extxyz", stages=[dict(kind="minimise", steps=1)]), "structure file not found"),
    (dict(structure="argon.extxyz", model="no-such-model", stages=[dict(kind="minimise", steps=1)]),
     "no checkpoint file or pretrained model named 'no-such-model'"),
    (dict(structure="argon.extxyz", compile=True, stages=[dict(kind="minimise", steps=1)]),
     "Bamboo models cannot run through torch.compile"),
])
def test_cli_reports_user_errors_in_one_line(tmp_path: Path, argon: Path, cli, capsys, data: dict,
                                             message: str) -> None:
    config = _write_config(tmp_path / "bad.yaml", data)
    code = cli(["md", "run", str(config), "--output", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and message in err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_errors_for_bad_yaml_missing_checkpoint_and_overlaps(tmp_path: Path, argon: Path, cli, capsys,
                                                                 tiny_model: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [\n  kind: nvt\n")
    assert cli(["md", "run", str(broken)]) != 0
    assert "invalid YAML" in capsys.readouterr().err

    good = _write_config(tmp_path / "good.yaml", dict(structure=argon.name, stages=[dict(kind="minimise", steps=1)]))
    assert cli(["md", "run", str(good), "--output", str(tmp_path / "none"), "--resume"]) != 0
    assert "no checkpoint to resume from" in capsys.readouterr().err

    atoms = ase.io.read(argon)
    atoms.positions[1] = atoms.positions[0] + [0.2, 0.0, 0.0]
    ase.io.write(tmp_path / "overlap.extxyz", atoms)
    overlap = _write_config(tmp_path / "overlap.yaml", dict(structure="overlap.extxyz", model=str(tiny_model),
                                                            stages=[dict(kind="minimise", steps=1)]))
    assert cli(["md", "run", str(overlap), "--output", str(tmp_path / "o")]) != 0
    assert "overlapping atoms" in capsys.readouterr().err

    assert cli(["md", "analyze", str(tmp_path / "nowhere")]) != 0
    assert "run directory not found" in capsys.readouterr().err
    assert cli(["md", "run", str(good), "--set", "stages.0.steps=-1"]) != 0
    assert "stages.0.steps" in capsys.readouterr().err


def test_a_model_caveat_is_printed_and_recorded(tmp_path: Path, argon: Path, cli, capsys) -> None:
    import matsim.models

    model = matsim.models.create("bamboo", cutoff=4.0, species=[18], channels=8, num_layers=1, num_heads=2,
                                 charges=False)
    checkpoint = matsim.models.save_model(model, tmp_path / "caveat.pt",
                                          metadata={"caveat": "preliminary: liquids densify"})
    config = _write_config(tmp_path / "c.yaml", dict(structure=argon.name, model=str(checkpoint),
                                                     stages=[dict(kind="minimise", steps=1)],
                                                     analysis=dict(enabled=False)))
    assert cli(["md", "run", str(config), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "warning: model" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "run.json").read_text())["model_caveat"] == "preliminary: liquids densify"


@pytest.mark.parametrize("direct_forces", [False, True])
def test_md_calculator_adds_the_stress_only_where_it_is_free(direct_forces: bool) -> None:
    """Conservative models return the stress with every force call (the virial of the edge forces); a direct-force
    model would need a backward pass for it, so it computes the stress only when asked, and then the same value."""
    from ase.build import molecule

    from matsim.md.runner import MDCalculator
    from matsim.models import create

    model = create("escaip", cutoff=3.0, species=[1, 6, 8], hidden=8, num_layers=1, num_heads=2, num_radial=4,
                   max_neighbors=48, l_max_angular=1, angular_channels=2, direct_forces=direct_forces)
    atoms = molecule("CH3OH")
    atoms.set_cell([8.0, 8.0, 8.0])
    atoms.center()
    atoms.pbc = True
    atoms.calc = MDCalculator(model, device="cpu", dtype="float64")
    atoms.get_forces()
    assert ("stress" in atoms.calc.results) is not direct_forces
    stress = atoms.get_stress()
    reference = atoms.copy()
    reference.calc = MDCalculator(model, device="cpu", dtype="float64")
    np.testing.assert_allclose(stress, reference.get_stress(), atol=1e-12)
