"""Reference IR spectra (GFN2-xTB): modes, bands, broadening, invariance; SPECTRA.h5 round trip, resume and failures,
sticks-only files and merging; the ``matsim spectra`` / ``matsim elucidate`` commands."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase.vibrations import Infrared
from scipy.spatial.transform import Rotation

from matsim.cli.app import main
from matsim.core.errors import ConfigError, InputFileError
from matsim.datasets.spectra import (
    SpectraWriter,
    SpectrumRecord,
    merge_spectra,
    read_molecule_list,
    read_spectra,
    split_spectra,
)
from matsim.metrics.spectra import spectral_cosine
from matsim.reference.spectra import (
    IR_GRID,
    IRSpectrum,
    SpectrumFailed,
    SpectrumSettings,
    broaden,
    broaden_many,
    conformer_from_smiles,
    ir_from_smiles,
    ir_spectrum,
    normalise,
)
from matsim.reference.spectra_batch import compute_spectra, file_attributes
from matsim.reference.vibrations import finite_difference_derivatives, harmonic_modes

pytest.importorskip("tblite")

#: cyclopropyne: rdkit parses it but cannot embed it in 3D.
UNEMBEDDABLE = "C1#CC1"


@pytest.fixture(scope="module")
def water() -> IRSpectrum:
    return ir_from_smiles("O")


@pytest.fixture(scope="module")
def formaldehyde() -> IRSpectrum:
    return ir_from_smiles("C=O")


def test_mode_counts_and_no_imaginary_modes(water: IRSpectrum, formaldehyde: IRSpectrum) -> None:
    co2 = ir_from_smiles("O=C=O")  # linear: 3N - 5
    for result, n_modes in ((water, 3), (formaldehyde, 6), (co2, 4)):
        assert len(result.modes.frequencies) == len(result.modes.intensities) == n_modes
        assert result.modes.n_imaginary == 0 and result.modes.lowest_frequency > 0
    assert co2.modes.intensities[np.argmax(co2.modes.frequencies)] > 500  # the strong asymmetric stretch


def test_known_bands(water: IRSpectrum, formaldehyde: IRSpectrum) -> None:
    assert (water.modes.frequencies[1:] > 3500).all()  # the two O-H stretches
    assert 1450 < water.modes.frequencies[0] < 1700  # the bend
    strongest = formaldehyde.modes.frequencies[np.argmax(formaldehyde.modes.intensities)]
    assert 1700 < strongest < 1900  # C=O stretch
    assert IR_GRID[np.argmax(formaldehyde.spectrum)] == pytest.approx(strongest, abs=1.0)


def test_agrees_with_ase_infrared(water: IRSpectrum, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    atoms = water.atoms.copy()
    atoms.calc = SpectrumSettings().reference.calculator()
    ir = Infrared(atoms, name="ir")
    ir.run()
    frequencies = np.real(ir.get_frequencies())[-3:]
    km_per_mol = ir.intensity_prefactor("km/mol")[0] * ir.intensities[-3:]
    np.testing.assert_allclose(water.modes.frequencies, frequencies, atol=1.0)
    np.testing.assert_allclose(water.modes.intensities, km_per_mol, rtol=0.01, atol=0.2)


def test_rotation_leaves_the_spectrum_unchanged(formaldehyde: IRSpectrum) -> None:
    rotated = formaldehyde.atoms.copy()
    rotated.positions = Rotation.from_euler("xyz", [37, -64, 121], degrees=True).apply(rotated.positions) + 1.7
    again = ir_spectrum(rotated, optimised=True)
    # Finite differences along rotated axes move bands by < 1 cm⁻¹ (15 cm⁻¹ wide): same spectrum to 1e-3 in cosine.
    np.testing.assert_allclose(again.modes.frequencies, formaldehyde.modes.frequencies, atol=1.0)
    np.testing.assert_allclose(again.modes.intensities, formaldehyde.modes.intensities, rtol=0.01, atol=0.05)
    assert spectral_cosine(again.spectrum, formaldehyde.spectrum) > 0.999


def test_broadening_conserves_integrated_intensity() -> None:
    frequencies, intensities = np.array([1000.0, 1750.0, 3000.0, -150.0]), np.array([10.0, 50.0, 5.0, 99.0])
    gaussian = broaden(frequencies, intensities, shape="gaussian")
    assert np.trapezoid(gaussian, IR_GRID) == pytest.approx(65.0, rel=1e-4)  # the imaginary mode adds nothing
    lorentzian = broaden(frequencies, intensities, fwhm=15.0)
    half = 7.5
    inside = sum(i * (math.atan((IR_GRID[-1] - f) / half) - math.atan((IR_GRID[0] - f) / half)) / math.pi
                 for f, i in zip(frequencies[:3], intensities[:3]))
    assert np.trapezoid(lorentzian, IR_GRID) == pytest.approx(inside, rel=1e-3)
    assert inside / 65.0 > 0.99
    with pytest.raises(ConfigError):
        broaden(frequencies, intensities, shape="voigt")


def test_broaden_many_is_broaden_per_molecule() -> None:
    rng = np.random.default_rng(3)
    sizes = [0, 5, 200, 0, 0, 1, 70]  # empty molecules, and more modes than one block
    offsets = np.concatenate([[0], np.cumsum(sizes)]) + 11  # a slice of a file: offsets need not start at 0
    frequencies, intensities = rng.uniform(-300, 4300, sum(sizes)), rng.uniform(0, 80, sum(sizes))
    for shape in ("lorentzian", "gaussian"):
        many = broaden_many(frequencies, intensities, offsets, fwhm=12.0, shape=shape)
        for i in range(len(sizes)):
            rows = slice(offsets[i] - 11, offsets[i + 1] - 11)
            assert np.array_equal(many[i], broaden(frequencies[rows], intensities[rows], fwhm=12.0, shape=shape))
        assert not many[[0, 3, 4]].any()


def test_imaginary_modes_are_reported(water: IRSpectrum) -> None:
    hessian, dipole_derivatives = finite_difference_derivatives(water.atoms, SpectrumSettings().reference.calculator())
    inverted = harmonic_modes(water.atoms, -hessian, dipole_derivatives)  # a maximum: every mode imaginary
    assert inverted.n_imaginary == 3 and len(inverted.frequencies) == 3
    np.testing.assert_allclose(inverted.frequencies, -water.modes.frequencies[::-1], atol=0.5)
    assert inverted.lowest_frequency == pytest.approx(-water.modes.frequencies[-1], abs=0.5)
    assert broaden(inverted.frequencies, inverted.intensities).max() == 0.0  # imaginary modes are not bands


def test_ir_inactive_molecule_has_a_zero_spectrum() -> None:
    nitrogen = ir_from_smiles("N#N")
    assert len(nitrogen.modes.frequencies) == 1 and nitrogen.modes.intensities[0] < 1e-3
    spectrum, peak = normalise(nitrogen.spectrum)
    assert not spectrum.any() and peak < 1e-4


def test_conformer_charge_and_embedding_failure() -> None:
    assert conformer_from_smiles("[NH4+]").info["charge"] == 1
    with pytest.raises(SpectrumFailed, match="cannot embed"):
        ir_from_smiles(UNEMBEDDABLE)
    with pytest.raises(ConfigError, match="unknown method"):
        SpectrumSettings(method="hf")


# ------------------------------------------------------------------------------------------------- SPECTRA.h5
def _record(mol_id: str, n_atoms: int) -> SpectrumRecord:
    rng = np.random.default_rng(len(mol_id))
    return SpectrumRecord(
        smiles="C" * n_atoms, id=mol_id, method="gfn2", ir=rng.random(len(IR_GRID)).astype(np.float32), ir_max=2.5,
        energy=-10.0, atomic_numbers=np.full(n_atoms, 6), positions=rng.random((n_atoms, 3)),
        frequencies=np.array([-20.0] + [1000.0] * (3 * n_atoms - 7)), intensities=np.ones(3 * n_atoms - 6),
    )


def test_hdf5_round_trip_and_torn_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    records = [_record("a", 3), _record("bb", 5)]
    with SpectraWriter(path, IR_GRID, file_attributes(SpectrumSettings())) as writer:
        for record in records:
            writer.append(record)
        writer.add_failure("c", "C1#CC1", "rdkit cannot embed")
    with h5py.File(path, "a") as f:  # a run killed in the middle of a write leaves rows beyond n_molecules
        f["ir"].resize(3, axis=0)
        f["atomic_numbers"].resize(20, axis=0)
    data = read_spectra(path)
    assert len(data) == 2 and data.ids == ["a", "bb"] and data.failed == [
        {"id": "c", "smiles": "C1#CC1", "reason": "rdkit cannot embed"}]
    for i, record in enumerate(records):
        numbers, positions = data.molecule(i)
        frequencies, intensities = data.modes(i)
        np.testing.assert_array_equal(numbers, record.atomic_numbers)
        np.testing.assert_allclose(positions, record.positions)
        np.testing.assert_allclose(frequencies, record.frequencies)
        np.testing.assert_allclose(data.ir[i], record.ir)
        assert data.n_imaginary[i] == 1 and data.lowest_frequency[i] == -20.0
    assert data.attrs["fwhm_cm-1"] == 15.0 and data.attrs["method"] == "gfn2" and data.attrs["ir_stored"] is True
    with SpectraWriter(path, IR_GRID, file_attributes(SpectrumSettings())) as writer:
        writer.append(_record("d", 4))  # overwrites the torn rows
    data = read_spectra(path)
    assert data.ids == ["a", "bb", "d"] and data.ir.shape == (3, len(IR_GRID))
    assert data.atom_offsets.tolist() == [0, 3, 8, 12] and len(data.atomic_numbers) == 12
    with pytest.raises(ConfigError, match="fwhm"):
        SpectraWriter(path, IR_GRID, file_attributes(SpectrumSettings(fwhm=10.0)))
    with h5py.File(path, "a") as f:  # files written before ir_stored existed store ir
        del f.attrs["ir_stored"]
    np.testing.assert_array_equal(read_spectra(path).ir, data.ir)
    with pytest.raises(ConfigError, match="sticks only"):
        SpectraWriter(path, IR_GRID, file_attributes(SpectrumSettings()), store_ir=False)


def test_sticks_only_compute_rebuilds_the_dense_spectra(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    smi = tmp_path / "m.smi"
    smi.write_text("O water\nCO methanol\n")
    dense, sticks = tmp_path / "dense.h5", tmp_path / "sticks.h5"
    assert compute_spectra(smi, dense, n_jobs=1).done == 2
    code, out, err = _run(["spectra", "compute", str(smi), "-o", str(sticks), "-j", "1", "--sticks-only"], capsys)
    assert code == 0 and "computed 2" in out, err
    with h5py.File(sticks) as f:
        assert "ir" not in f and bool(f.attrs["ir_stored"]) is False and len(f["ir_max"]) == 2
    expected, rebuilt = read_spectra(dense), read_spectra(sticks)
    assert rebuilt.ir.dtype == np.float32 and rebuilt.ir.shape == expected.ir.shape == (2, len(IR_GRID))
    # the compute step broadens the sticks as stored, so the rebuilt spectra are the dense ones (not just close)
    assert np.abs(rebuilt.ir - expected.ir).max() < 1e-7
    np.testing.assert_array_equal(rebuilt.ir_max, expected.ir_max)
    with pytest.raises(ConfigError, match="sticks only"):  # a resumed run keeps the file's kind
        compute_spectra(smi, sticks, n_jobs=1)


def _sticks_record(mol_id: str, smiles: str, seed: int) -> SpectrumRecord:
    """A molecule with random float64 sticks and its dense spectrum broadened from them (as files written before the
    compute step broadened float32 sticks)."""
    rng = np.random.default_rng(seed)
    n_modes = 3 * len(smiles) + seed % 4
    frequencies = np.sort(rng.uniform(-40.0, 3900.0, n_modes))
    intensities = rng.uniform(0.0, 120.0, n_modes)
    ir, peak = normalise(broaden(frequencies, intensities))
    return SpectrumRecord(smiles=smiles, id=mol_id, method="gfn2", ir=ir.astype(np.float32), ir_max=peak,
                          energy=-float(seed), atomic_numbers=np.full(len(smiles), 6),
                          positions=rng.random((len(smiles), 3)), frequencies=frequencies, intensities=intensities)


_SHARD_SMILES = ["CCO", "CCC", "CO", "CC=O", "CCN", "C#N", "OC=O", "c1ccccc1", "CC(C)C", "NC=O"]


def _write_shard(path: Path, first: int, count: int, store_ir: bool, failures: list[tuple[str, str, str]]) -> None:
    with SpectraWriter(path, IR_GRID, file_attributes(SpectrumSettings()), store_ir=store_ir) as writer:
        writer.extend([_sticks_record(f"m{i}", _SHARD_SMILES[i], i) for i in range(first, first + count)])
        writer.add_failures(failures)


def test_merge_shards_and_convert(tmp_path: Path) -> None:
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    _write_shard(a, 0, 6, True, [("bad", "C1#CC1", "cannot embed"), ("m8", "CC(C)C", "SCF failure")])
    _write_shard(b, 6, 4, False, [("bad", "C1#CC1", "cannot embed either")])  # m8 was retried here and succeeded
    dense = read_spectra(a)
    assert np.abs(read_spectra(b).ir - np.stack([_sticks_record(f"m{i}", _SHARD_SMILES[i], i).ir
                                                 for i in range(6, 10)])).max() < 3e-5
    summary = merge_spectra([a, b], tmp_path / "sticks.h5", store_ir=False)
    assert (summary.molecules, summary.failed, summary.store_ir) == (10, 1, False)
    merged = read_spectra(tmp_path / "sticks.h5")
    assert merged.ids == [f"m{i}" for i in range(10)] and merged.attrs["ir_stored"] is False
    assert merged.failed == [{"id": "bad", "smiles": "C1#CC1", "reason": "cannot embed either"}]
    # float64 sticks stored as float32 move bands by < 2.4e-4 cm⁻¹: < 2e-5 on a unit Lorentzian of FWHM 15 cm⁻¹
    assert np.abs(merged.ir[:6] - dense.ir).max() < 3e-5
    np.testing.assert_array_equal(merged.ir[6:], read_spectra(b).ir)
    np.testing.assert_array_equal(merged.ir_max, np.concatenate([dense.ir_max, read_spectra(b).ir_max]))
    np.testing.assert_array_equal(merged.positions[: dense.atom_offsets[-1]], dense.positions)
    merge_spectra([tmp_path / "sticks.h5"], tmp_path / "dense.h5")  # and back to dense
    np.testing.assert_array_equal(read_spectra(tmp_path / "dense.h5").ir, merged.ir)
    assert not list(tmp_path.glob("*.partial"))

    with pytest.raises(ConfigError, match="exists"):
        merge_spectra([a, b], tmp_path / "dense.h5")
    _write_shard(tmp_path / "again.h5", 5, 2, True, [])
    with pytest.raises(InputFileError, match="'m5' is in both"):
        merge_spectra([a, tmp_path / "again.h5"], tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "out.h5.partial").exists()
    with SpectraWriter(tmp_path / "wide.h5", IR_GRID, file_attributes(SpectrumSettings(fwhm=10.0))) as writer:
        writer.append(_sticks_record("w", "CC", 0))
    with pytest.raises(ConfigError, match="fwhm_cm-1"):
        merge_spectra([a, tmp_path / "wide.h5"], tmp_path / "out.h5")
    with SpectraWriter(tmp_path / "coarse.h5", IR_GRID[::2], file_attributes(SpectrumSettings())) as writer:
        writer.append(dataclasses.replace(_sticks_record("c", "CC", 0), ir=np.zeros(len(IR_GRID[::2]), np.float32)))
    with pytest.raises(ConfigError, match="grid"):
        merge_spectra([a, tmp_path / "coarse.h5"], tmp_path / "out.h5")


def test_sticks_only_recipe_must_be_rebuildable(tmp_path: Path) -> None:
    voigt = {**file_attributes(SpectrumSettings()), "line_shape": "voigt"}
    with pytest.raises(ConfigError, match="line_shape 'voigt'"):
        SpectraWriter(tmp_path / "v.h5", IR_GRID, voigt, store_ir=False)
    assert not (tmp_path / "v.h5").exists()
    path = tmp_path / "s.h5"
    _write_shard(path, 0, 2, False, [])
    for key, value, message in (("normalisation", "area", "normalisation 'area'"), ("line_shape", "voigt", "voigt")):
        with h5py.File(path, "a") as f:
            f.attrs[key] = value
        with pytest.raises(InputFileError, match=message):
            read_spectra(path)


def test_resume_skips_done_molecules_and_records_failures(tmp_path: Path) -> None:
    first = tmp_path / "first.smi"
    first.write_text("O water\nC=O formaldehyde\n")
    output = tmp_path / "s.h5"
    summary = compute_spectra(first, output, n_jobs=1)
    assert summary.done == 2 and summary.skipped == 0 and not summary.failed
    more = tmp_path / "more.smi"
    more.write_text(f"O water\nC=O formaldehyde\n{UNEMBEDDABLE} bad\nC#N hcn\n")
    summary = compute_spectra(more, output, n_jobs=1)
    assert summary.done == 1 and summary.skipped == 2 and list(summary.failed) == ["bad"]
    data = read_spectra(output)
    assert sorted(data.ids) == ["formaldehyde", "hcn", "water"] and "bad" not in data.ids
    assert data.failed[0]["id"] == "bad" and "cannot embed" in data.failed[0]["reason"]
    assert np.allclose(data.ir.max(axis=1), 1.0) and (data.n_imaginary == 0).all()
    again = compute_spectra(more, output, n_jobs=1)
    assert again.done == 0 and again.skipped == 4  # failures are not retried unless asked
    assert list(compute_spectra(more, output, n_jobs=1, retry_failed=True).failed) == ["bad"]
    other = tmp_path / "other.smi"
    other.write_text("CCO water\n")
    with pytest.raises(InputFileError, match="another input"):
        compute_spectra(other, output, n_jobs=1)
    with pytest.raises(ConfigError, match="method"):
        compute_spectra(first, output, SpectrumSettings(method="gfn1"), n_jobs=1)


def test_molecule_lists(tmp_path: Path) -> None:
    csv = tmp_path / "qm9.csv"
    csv.write_text("smiles\nC\nN\nO\n")  # the header of qm9_smiles.csv
    entries = read_molecule_list(csv, limit=2)
    assert [(e.smiles, e.id) for e in entries] == [("C", "0"), ("N", "1")]
    smi = tmp_path / "m.smi"
    smi.write_text("# comment\nCCO ethanol\n\nC1CC broken\n")
    with pytest.raises(InputFileError, match=r"m\.smi:4: .*C1CC"):
        read_molecule_list(smi)
    smi.write_text("CCO a\nCC a\n")
    with pytest.raises(InputFileError, match="repeats"):
        read_molecule_list(smi)


def test_split_by_molecule_and_scaffold() -> None:
    smiles = ["CCO", "OCC", "c1ccccc1C", "c1ccccc1O", "C1CCCC1", "C1CCCC1N", "CC", "CCC", "CCCC", "N"] * 3
    for kind in ("random", "scaffold"):
        split = split_spectra(smiles, valid=0.2, test=0.2, kind=kind, seed=1)
        rows = split.train + split.valid + split.test
        assert sorted(rows) == list(range(len(smiles))) and split.train and split.test
        assert split == split_spectra(smiles, valid=0.2, test=0.2, kind=kind, seed=1)
        side = {i: name for name in ("train", "valid", "test") for i in getattr(split, name)}
        assert side[0] == side[1] == side[10]  # CCO and OCC are one molecule
    scaffold = split_spectra(smiles, valid=0.2, test=0.2, kind="scaffold", seed=1)
    scaffold_side = {i: name for name in ("train", "valid", "test") for i in getattr(scaffold, name)}
    assert scaffold_side[2] == scaffold_side[3]  # both benzene scaffolds


# --------------------------------------------------------------------------------------------------------- CLI
def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_cli_compute_split_and_elucidate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    smi = tmp_path / "m.smi"
    smi.write_text("O water\nC=O formaldehyde\nCO methanol\n")
    output = tmp_path / "s.h5"
    code, out, err = _run(["spectra", "compute", str(smi), "--method", "gfn2", "--output", str(output),
                           "--jobs", "2"], capsys)
    assert code == 0 and "computed 3" in out and "failed 0" in out, err
    code, out, _ = _run(["spectra", "compute", str(smi), "-o", str(output), "-j", "2", "--no-progress"], capsys)
    assert code == 0 and "computed 0, skipped 3" in out
    code, out, _ = _run(["spectra", "split", str(output), "-o", str(tmp_path / "split.json"), "--valid", "0.34",
                         "--test", "0.34"], capsys)
    assert code == 0 and sorted(sum((v for k, v in json.loads((tmp_path / "split.json").read_text()).items()
                                     if k in ("train", "valid", "test")), [])) == [0, 1, 2]
    code, out, _ = _run(["elucidate", str(output), "-k", "2", "--model", f"retrieval:{output}", "--json"], capsys)
    ranked = json.loads(out)
    assert code == 0 and sorted(r["id"] for r in ranked) == ["formaldehyde", "methanol", "water"]
    for entry in ranked:
        assert len(entry["candidates"]) == 2 and entry["candidates"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    code, out, _ = _run(["elucidate", str(output), "--model", f"retrieval:{output}"], capsys)
    assert code == 0 and "top-1 1.000" in out
    # without --model: the shipped DiffSpectra model, its caveat on stderr and clean JSON on stdout
    code, out, err = _run(["elucidate", str(output), "-k", "2", "--samples", "3", "--steps", "4", "--json"], capsys)
    ranked = json.loads(out)
    assert code == 0 and sorted(r["id"] for r in ranked) == ["formaldehyde", "methanol", "water"]
    assert err.startswith("warning: diffspectra-qm9") and all(len(r["candidates"]) <= 2 for r in ranked)


def test_cli_merge_then_split_and_retrieval_on_sticks_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, merged = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "merged.h5"
    _write_shard(a, 0, 5, True, [])
    _write_shard(b, 5, 5, True, [])
    code, out, err = _run(["spectra", "merge", str(a), str(b), "-o", str(merged), "--sticks-only"], capsys)
    assert code == 0 and "10 molecules" in out and "sticks-only" in out, err
    code, out, err = _run(["spectra", "merge", str(a), str(a), "-o", str(tmp_path / "twice.h5")], capsys)
    assert code == 2 and err.startswith("error: ") and "given twice" in err and "Traceback" not in err
    code, out, _ = _run(["spectra", "split", str(merged), "-o", str(tmp_path / "split.json"), "--valid", "0.2",
                         "--test", "0.2"], capsys)
    split = json.loads((tmp_path / "split.json").read_text())
    assert code == 0 and sorted(split["train"] + split["valid"] + split["test"]) == list(range(10))
    code, out, _ = _run(["elucidate", str(merged), "-k", "3", "--model", f"retrieval:{merged}"], capsys)
    assert code == 0 and "top-1 1.000" in out  # each rebuilt spectrum finds itself


@pytest.mark.parametrize("case", ["missing file", "bad smiles", "unknown method", "unknown model"])
def test_cli_bad_input_is_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    smi = tmp_path / "m.smi"
    smi.write_text("CCO\nC1CC\n" if case == "bad smiles" else "CCO\n")
    output = tmp_path / "s.h5"
    args = {
        "missing file": ["spectra", "compute", str(tmp_path / "none.smi"), "-o", str(output)],
        "bad smiles": ["spectra", "compute", str(smi), "-o", str(output)],
        "unknown method": ["spectra", "compute", str(smi), "-o", str(output), "--method", "hf"],
        "unknown model": ["elucidate", str(output), "--model", "diffusion:x.pt"],
    }[case]
    code, out, err = _run(args, capsys)
    expected = {"missing file": "none.smi", "bad smiles": "m.smi:2", "unknown method": "hf",
                "unknown model": "diffusion"}[case]
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0 and expected in err
    assert "Traceback" not in out + err and not output.exists()


@pytest.mark.slow
def test_dft_water_bands() -> None:
    result = ir_from_smiles("O", SpectrumSettings(method="dft"))
    assert len(result.modes.frequencies) == 3 and result.modes.n_imaginary == 0
    assert (result.modes.frequencies[1:] > 3600).all()
