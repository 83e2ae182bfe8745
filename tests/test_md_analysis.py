"""MD analysis against analytic cases: ideal gas g(r), Brownian diffusion, Nernst–Einstein, Ornstein–Uhlenbeck
Green–Kubo, AR(1) block averaging; and the whole-trajectory summary on a synthetic electrolyte trajectory."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from scipy.signal import lfilter

from matsim.core.errors import ConfigError
from matsim.core.units import KB_EV_PER_K
from matsim.md.analysis import (
    EV_FS_PER_A3_TO_MPA_S,
    AnalysisConfig,
    Estimate,
    analyze_trajectory,
    block_average,
    coordination_numbers,
    diffusion_coefficient,
    einstein_conductivity,
    first_minimum,
    green_kubo_viscosity,
    mean_squared_displacement,
    molecule_centres,
    nernst_einstein_conductivity,
    rdf,
    trajectory_summary,
    unwrap_positions,
)

TRICLINIC = np.array([[12.0, 0.0, 0.0], [3.0, 11.0, 0.0], [2.0, -2.0, 10.0]])


def _brownian(rng, n_frames, n_particles, d, dt=1.0):
    steps = rng.normal(scale=np.sqrt(2.0 * d * dt), size=(n_frames, n_particles, 3))
    return np.cumsum(steps, axis=0)


def test_block_average_of_a_short_series_is_the_plain_standard_error():
    for series in ([1.0, 3.0], [1.0, 2.0, 6.0]):
        result = block_average(series)
        x = np.asarray(series)
        assert result.mean == pytest.approx(x.mean())
        assert result.error == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)))
        assert not result.converged


def test_block_average_of_ar1_matches_exact_error():
    rng = np.random.default_rng(1)
    phi, n = 0.9, 2**16
    series = lfilter([1.0], [1.0, -phi], rng.normal(size=n))
    exact = np.sqrt(1.0 / (1.0 - phi**2) / n * (1.0 + phi) / (1.0 - phi))
    result = block_average(series)
    assert result.converged
    assert result.error == pytest.approx(exact, rel=0.2)
    assert abs(result.mean) < 4 * exact
    white = block_average(rng.normal(size=4096))
    assert white.error == pytest.approx(1 / 64, rel=0.15)


def test_rdf_of_uniform_points_is_one_in_a_triclinic_cell():
    rng = np.random.default_rng(2)
    frames, n = 20, 300
    positions = rng.random((frames, n, 3)) @ TRICLINIC
    cells = np.repeat(TRICLINIC[None], frames, axis=0)
    result = rdf(positions, cells, np.arange(100), np.arange(n), n_bins=40)
    tail = result.r > 1.5
    assert np.all(np.abs(result.g[tail] - 1.0) < 4 * result.g_error[tail] + 0.02)
    assert abs(result.g[tail].mean() - 1.0) < 0.02
    density = (n - 1) / abs(np.linalg.det(TRICLINIC))
    assert result.cn[-1] == pytest.approx(density * 4 / 3 * np.pi * result.r[-1] ** 3, rel=0.05)
    with pytest.raises(ConfigError, match="no first peak"):
        first_minimum(result)


def test_rdf_and_coordination_match_brute_force_minimum_image():
    rng = np.random.default_rng(3)
    positions = rng.random((1, 60, 3)) @ TRICLINIC
    cells = TRICLINIC[None]
    frac = (positions[0][:, None] - positions[0][None]) @ np.linalg.inv(TRICLINIC)
    shifts = np.array(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij")).reshape(3, -1).T
    frac -= np.round(frac)
    distances = np.linalg.norm((frac[:, :, None, :] + shifts) @ TRICLINIC, axis=-1).min(axis=-1)
    a, b, cutoff = np.arange(10), np.arange(10, 60), 3.5
    expected = (distances[np.ix_(a, b)] < cutoff).sum(axis=1)
    mean, counts = coordination_numbers(positions, cells, a, b, cutoff)
    assert np.array_equal(counts[0], expected)
    assert mean.value == pytest.approx(expected.mean())


def test_first_minimum_of_a_liquid_like_rdf():
    r = np.linspace(0.05, 8.0, 160)
    g = 1 + 2.5 * np.exp(-((r - 2.0) / 0.2) ** 2) - 0.6 * np.exp(-((r - 2.9) / 0.3) ** 2)
    g[r < 1.5] = 0.0
    from matsim.md.analysis import RDF

    peak, minimum = first_minimum(RDF(r, g, g * 0, g * 0, g * 0))
    assert peak == pytest.approx(2.0, abs=0.1)
    assert minimum == pytest.approx(2.9, abs=0.2)


def test_msd_fft_equals_direct_average():
    rng = np.random.default_rng(4)
    x = _brownian(rng, 50, 5, 0.1)
    direct = [np.mean(np.sum((x[lag:] - x[:-lag or None]) ** 2, axis=2)) if lag else 0.0 for lag in range(50)]
    assert np.allclose(mean_squared_displacement(x), direct)


def test_brownian_diffusion_coefficient_within_uncertainty():
    rng = np.random.default_rng(5)
    d_true = 0.01  # Å²/fs
    fit = diffusion_coefficient(_brownian(rng, 2000, 200, d_true), dt_fs=1.0, fit_window_fs=(20.0, 200.0))
    assert fit.window_fs == (20.0, 200.0)
    assert abs(fit.value.value - d_true) < 3 * fit.value.error
    assert fit.value.error < 0.1 * d_true


def test_unwrapping_a_wrapped_trajectory_in_a_triclinic_cell():
    rng = np.random.default_rng(6)
    x = _brownian(rng, 300, 20, 0.05) + 5.0
    cells = np.repeat(TRICLINIC[None], len(x), axis=0)
    frac = x @ np.linalg.inv(TRICLINIC)
    wrapped = (frac - np.floor(frac)) @ TRICLINIC
    unwrapped = unwrap_positions(wrapped, cells)
    assert np.allclose(unwrapped - unwrapped[0], x - x[0])


def test_molecule_centres_of_a_molecule_split_by_the_boundary():
    cell = np.eye(3) * 10.0
    positions = np.array([[[9.8, 5.0, 5.0], [0.2, 5.0, 5.0]]])  # a dimer straddling x = 0
    centres = molecule_centres(positions, cell[None], np.array([1.0, 1.0]), np.array([0, 0]))
    assert centres[0, 0, 0] == pytest.approx(10.0) and centres[0, 0, 1] == pytest.approx(5.0)


def test_nernst_einstein_by_hand():
    # one cation (z=+1) and one anion (z=-1), each D = 1e-5 cm²/s = 1e-4 Å²/fs, V = 1e4 Å³, T = 300 K
    sigma = nernst_einstein_conductivity([Estimate(1e-4, 1e-5), Estimate(1e-4, 0.0)], [1, 1], [1, -1], 1e4, 300.0)
    e, kb = 1.602176634e-19, 1.380649e-23
    expected_s_per_m = e**2 * 2 * 1e-9 / (1e4 * 1e-30 * kb * 300.0)
    assert sigma.value == pytest.approx(expected_s_per_m * 10.0, rel=1e-5)
    assert sigma.error == pytest.approx(sigma.value * 0.05, rel=1e-5)
    assert sigma.value == pytest.approx(12.395, rel=1e-3)  # mS/cm: 2.567e-38 C² × 2e-9 m²/s / (1e-26 m³ × 4.142e-21 J)


def test_einstein_conductivity_of_uncorrelated_ions_equals_nernst_einstein():
    rng = np.random.default_rng(7)
    d, n_ions = 1e-3, 100
    positions = _brownian(rng, 3000, n_ions, d)
    charges = np.where(np.arange(n_ions) < 50, 1, -1)
    sigma, fit = einstein_conductivity(positions, charges, 1.0, 5e4, 300.0, (30.0, 300.0))
    ne = nernst_einstein_conductivity([Estimate(d, 0.0)], [n_ions], [1], 5e4, 300.0)
    assert abs(sigma.value - ne.value) < 3 * sigma.error
    assert fit.window_fs == (30.0, 300.0)


def test_green_kubo_on_ornstein_uhlenbeck_stress():
    rng = np.random.default_rng(8)
    n, dt, tau, s = 100_000, 1.0, 20.0, 1e-3  # frames, fs, fs, eV/Å³
    a = np.exp(-dt / tau)

    def ou(variance):
        return lfilter([1.0], [1.0, -a], rng.normal(size=n) * np.sqrt(variance * (1 - a * a)))

    # normal components with variance 2 s² give (xx - yy)/2 the same variance s² as the shear components
    stress = np.stack([ou(2 * s * s), ou(2 * s * s), ou(2 * s * s), ou(s * s), ou(s * s), ou(s * s)], axis=1)
    volume, temperature = 1000.0, 300.0
    result = green_kubo_viscosity(stress, dt, volume, temperature, max_lag_fs=200.0, plateau_fs=(100.0, 200.0))
    # discrete OU: ∫ACF by the trapezoid rule = s² (1/(1-a) - 1/2)
    exact = volume / (KB_EV_PER_K * temperature) * s * s * dt * (1 / (1 - a) - 0.5) * EV_FS_PER_A3_TO_MPA_S
    assert abs(result.value.value - exact) < 3 * result.value.error
    assert result.value.error < 0.1 * exact
    assert result.running[0] == 0.0 and len(result.running) == 201


def _synthetic_trajectory(n_frames=120):
    """A built 1 M LiPF6 EC:DMC box whose molecules take rigid Brownian steps; random stress and momenta."""
    from matsim.md.builder import SystemConfig, build_box

    box = build_box(SystemConfig(solvents=[{"name": "EC"}, {"name": "DMC"}],
                                 salts=[{"name": "LiPF6", "concentration": 1.0}], n_atoms=300, seed=2))
    rng = np.random.default_rng(9)
    mol = box.arrays["mol_id"]
    shift = np.zeros((mol.max() + 1, 3))
    frames = []
    for _ in range(n_frames):
        frame = box.copy()
        frame.positions += shift[mol]
        frame.wrap()
        frame.set_momenta(rng.normal(scale=0.5, size=(len(frame), 3)))
        frame.calc = SinglePointCalculator(frame, energy=-1.0, stress=rng.normal(scale=1e-3, size=6))
        frames.append(frame)
        shift += rng.normal(scale=0.05, size=shift.shape)
    return frames


def test_trajectory_summary_is_json_and_sensible(tmp_path):
    frames = _synthetic_trajectory()
    path = tmp_path / "traj.extxyz"
    ase.io.write(path, frames)
    config = AnalysisConfig(frame_interval_fs=10.0, temperature=300.0, rdf_max_frames=10)
    summary = trajectory_summary(path, config)
    json.dumps(summary, allow_nan=False)
    assert summary["n_frames"] == 120
    assert set(summary["diffusion_cm2_s"]) == {"EC", "DMC", "Li", "PF6"}
    d_true = 0.05**2 / (2 * 10.0) * 0.1  # cm²/s
    for entry in summary["diffusion_cm2_s"].values():
        assert entry["value"] == pytest.approx(d_true, rel=0.5)
    assert {"nernst_einstein", "einstein"} <= set(summary["conductivity_mS_cm"])
    assert summary["viscosity_mPa_s"]["error"] > 0
    assert summary["thermo"]["density_g_cm3"]["value"] == pytest.approx(1.26, rel=0.05)
    assert "Li-O" in summary["rdf"]


def test_plots_are_written(tmp_path):
    from matsim.md.plots import plot_analysis

    analysis = analyze_trajectory(_synthetic_trajectory(60), AnalysisConfig(frame_interval_fs=10.0, rdf_max_frames=5))
    paths = plot_analysis(analysis, tmp_path)
    assert {p.name for p in paths} == {"thermo.png", "rdf.png", "msd.png", "green_kubo.png"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_bad_windows_raise_config_errors():
    x = _brownian(np.random.default_rng(10), 100, 3, 0.01)
    with pytest.raises(ConfigError, match="at least"):
        diffusion_coefficient(x, 1.0, fit_window_fs=(5.0, 50.0), n_blocks=5)
    with pytest.raises(ConfigError, match="plateau window"):
        green_kubo_viscosity(np.zeros((100, 6)), 1.0, 1.0, 300.0, max_lag_fs=5.0, plateau_fs=(2.0, 9.0))
