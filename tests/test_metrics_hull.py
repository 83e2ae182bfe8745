"""Energy above hull and stability fractions on a tiny Na–Cl system with hand-computed energies.

Formation energies (eV/atom) put into the toy oracle: NaCl −0.5 (known phase), candidates NaCl2 −0.2,
Na2Cl −0.45, NaCl3 −0.2. The hull of {Na, Cl, NaCl} is the line from (x_Cl=0, 0) to (0.5, −0.5) to (1, 0), so
  NaCl2  (x=2/3): hull −1/3,  E_hull = −0.2 + 1/3  = +0.1333
  Na2Cl  (x=1/3): hull −1/3,  E_hull = −0.45 + 1/3 = −0.1167 (below the hull: negative)
  NaCl3  (x=3/4): hull −1/4,  E_hull = −0.2 + 1/4  = +0.05
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.core import Composition, Lattice, Structure

from matsim.core.errors import ConfigError
from matsim.metrics.hull import (
    CachedRelaxer,
    EnergyOracle,
    ParallelRelaxer,
    Relaxer,
    elemental_prototypes,
    energy_above_hull,
    hull_stability,
    relax,
    stability_metrics,
)

MU = {"Na": -1.3, "Cl": -1.8}  # eV/atom of the elements (arbitrary: energies above hull do not depend on them)
FORMATION = {"NaCl": -0.5, "NaCl2": -0.2, "Na2Cl": -0.45, "NaCl3": -0.2}  # eV/atom


class ToyOracle(Calculator):
    """Energy = Σ μ(element) + n_atoms × formation energy of the reduced formula; no forces, no stress."""

    implemented_properties = ["energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        symbols = self.atoms.get_chemical_symbols()
        formula = Composition("".join(symbols)).reduced_formula
        energy = sum(MU[s] for s in symbols) + len(symbols) * FORMATION.get(formula, 0.0)
        self.results = {"energy": energy, "forces": np.zeros((len(symbols), 3)), "stress": np.zeros(6)}


class BrokenOracle(ToyOracle):
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        raise RuntimeError("model exploded")


class SpringOracle(Calculator):
    """Harmonic springs pulling every atom to the origin: never converges in a few steps."""

    implemented_properties = ["energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x = self.atoms.positions
        self.results = {"energy": float((x**2).sum()), "forces": -2 * x, "stress": np.zeros(6)}


def crystal(species: list[str], a: float = 5.0) -> Structure:
    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0]][: len(species)]
    return Structure(Lattice.cubic(a), species, coords)


def entry(formula: str) -> PDEntry:
    comp = Composition(formula)
    energy = sum(MU[el.symbol] * n for el, n in comp.items()) + comp.num_atoms * FORMATION.get(
        comp.reduced_formula, 0.0)
    return PDEntry(comp, energy)


REFERENCES = [entry("Na"), entry("Cl2"), entry("NaCl")]


def test_energy_above_hull_by_hand_including_below_hull():
    candidates = [entry("NaCl2"), entry("Na2Cl"), entry("NaCl3"), entry("NaCl"), None, PDEntry("KCl", -5.0)]
    e = energy_above_hull(candidates, REFERENCES)
    assert e[0] == pytest.approx(1 / 3 - 0.2)
    assert e[1] == pytest.approx(1 / 3 - 0.45)
    assert e[1] < 0
    assert e[2] == pytest.approx(0.05)
    assert e[3] == pytest.approx(0.0, abs=1e-9)
    assert e[4] is None and e[5] is None  # no K reference


def test_stability_fractions_and_sun():
    e = [0.1333, -0.1167, 0.05, None]
    m = stability_metrics(e, unique=[True, True, False, False], novel=[True, False, True, True])
    assert m.stable == {"0.0": 0.25, "0.1": 0.5}
    assert m.sun == {"0.0": 0.0, "0.1": 0.0}
    m = stability_metrics(e, unique=[True] * 4, novel=[True] * 4)
    assert m.sun == {"0.0": 0.25, "0.1": 0.5}
    assert m.n_evaluated == 3 and m.mean_e_above_hull == pytest.approx((0.1333 - 0.1167 + 0.05) / 3)
    data = m.to_dict()
    assert data["stable_0.0"] == 0.25 and data["sun_0.1"] == 0.5
    with pytest.raises(ConfigError):
        stability_metrics(e, unique=[True], novel=[True])


def test_hull_stability_end_to_end_with_toy_oracle():
    samples = [
        crystal(["Na", "Cl", "Cl"]),
        crystal(["Na", "Na", "Cl"]),
        crystal(["Na", "Cl", "Cl", "Cl"]),
        None,
        crystal(["Na", "Cl"], a=0.4),  # not evaluated (structurally invalid)
    ]
    oracle = ToyOracle()
    assert isinstance(oracle, EnergyOracle)
    m = hull_stability(
        samples, oracle, known=[crystal(["Na", "Cl"]), None, crystal(["K", "Cl"])],
        evaluate=[True, True, True, False, False], unique=[True] * 5, novel=[True, True, False, True, True],
    )
    assert m.e_above_hull[0] == pytest.approx(1 / 3 - 0.2)
    assert m.e_above_hull[1] == pytest.approx(1 / 3 - 0.45)
    assert m.e_above_hull[2] == pytest.approx(0.05)
    assert m.e_above_hull[3:] == (None, None)
    assert m.stable == {"0.0": pytest.approx(1 / 5), "0.1": pytest.approx(2 / 5)}
    assert m.sun == {"0.0": pytest.approx(1 / 5), "0.1": pytest.approx(1 / 5)}  # NaCl3 is not novel
    assert m.failures == ()


def test_parallel_relaxer_gives_the_serial_result_in_order():
    """Two spawned workers, each building its own oracle, give the serial hull (same order, same failures)."""
    samples = [crystal(["Na", "Cl", "Cl"]), None, crystal(["Na", "Na", "Cl"]), crystal(["Na", "Cl", "Cl", "Cl"])]
    known = [crystal(["Na", "Cl"])]
    serial = hull_stability(samples, ToyOracle(), known=known)
    with ParallelRelaxer(ToyOracle, workers=2) as relaxer:
        parallel = hull_stability(samples, relaxer, known=known)
    assert parallel.e_above_hull == pytest.approx(serial.e_above_hull)
    assert parallel.e_above_hull[0] == pytest.approx(1 / 3 - 0.2) and parallel.e_above_hull[1] is None
    with ParallelRelaxer(BrokenOracle, workers=2) as relaxer:
        broken = hull_stability(samples[:1], relaxer)
    assert broken.e_above_hull == (None,) and any("model exploded" in f for f in broken.failures)
    with pytest.raises(ConfigError, match="workers and threads must be ≥ 1"):
        ParallelRelaxer(ToyOracle, workers=0)


def test_user_entries_join_the_hull():
    samples = [crystal(["Na", "Na", "Cl"])]
    user = [(Composition("Na2Cl"), entry("Na2Cl").energy - 3 * 0.2)]  # 0.2 eV/atom below the candidate
    m = hull_stability(samples, ToyOracle(), known=[crystal(["Na", "Cl"])], user_entries=user)
    assert m.e_above_hull[0] == pytest.approx(0.2)


def test_oracle_failures_are_reported_not_raised():
    m = hull_stability([crystal(["Na", "Cl"])], BrokenOracle())
    assert m.e_above_hull == (None,)
    assert m.stable["0.1"] == 0.0
    assert any("model exploded" in f for f in m.failures)


def test_relax_step_limit_and_timeout():
    structure = crystal(["Na", "Cl"], a=6.0)
    result = relax(structure, SpringOracle(), max_steps=3, relax_cell=False)
    assert result.ok and not result.converged and result.n_steps == 3
    result = relax(structure, SpringOracle(), max_steps=10_000, timeout_s=0.0, relax_cell=False)
    assert result.ok and not result.converged and result.n_steps <= 1
    static = relax(structure, ToyOracle(), max_steps=0)
    assert static.energy == pytest.approx(MU["Na"] + MU["Cl"] + 2 * FORMATION["NaCl"]) and static.n_steps == 0


def test_elemental_prototypes():
    assert [len(s) for s in elemental_prototypes("O")] == [2]
    (copper,) = elemental_prototypes("Cu")  # ASE's tabulated fcc Cu, a = 3.61 Å
    assert copper.lattice.volume == pytest.approx(3.61**3 / 4, rel=1e-3)
    boron = elemental_prototypes("B")  # no tabulated ground state: fcc, bcc, hcp trials
    assert [len(s) for s in boron] == [1, 1, 2]
    with pytest.raises(ConfigError):
        elemental_prototypes("Xx")


@pytest.mark.slow
def test_chgnet_oracle_offline_sr_ti_o():
    from matsim.metrics.hull import chgnet_calculator

    oracle = chgnet_calculator()
    perovskite = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                           [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    result = relax(perovskite, oracle, max_steps=20)
    assert result.ok and -9.5 < result.energy / 5 < -7.5


class Float32Oracle(ToyOracle):
    """:class:`ToyOracle` with numpy float32 results, as CHGNet returns them."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {key: np.float32(value) if key == "energy" else value.astype(np.float32)
                        for key, value in self.results.items()}


class CountingRelaxer(Relaxer):
    """A serial relaxer around :class:`Float32Oracle` that counts the relaxations it really runs."""

    def __init__(self) -> None:
        super().__init__(Float32Oracle())
        self.count = 0

    def relax_all(self, structures, max_steps, fmax=0.05, timeout_s=60.0):
        for result in super().relax_all(structures, max_steps, fmax, timeout_s):
            self.count += 1
            yield result


def test_cached_relaxer_resumes_from_its_file(tmp_path):
    samples = [crystal(["Na", "Cl", "Cl"]), crystal(["Na", "Na", "Cl"]), crystal(["Na", "Cl", "Cl"])]
    first, reports = CountingRelaxer(), []
    cached = CachedRelaxer(first, tmp_path / "relaxed.jsonl", progress=lambda done, total: reports.append(done),
                           report_every=1)
    results = list(cached.relax_all(samples[:2], [50, 50]))
    assert first.count == 2 and reports == [1, 2] and len(cached) == 2
    (tmp_path / "relaxed.jsonl").open("a").write('{"key": "cut by a ki')  # a line cut by a kill is skipped

    again = CountingRelaxer()
    resumed = CachedRelaxer(again, tmp_path / "relaxed.jsonl")
    back = list(resumed.relax_all(samples, [50, 50, 50]))
    assert again.count == 0  # the third sample is the first one again
    assert [r.energy for r in back] == pytest.approx([results[0].energy, results[1].energy, results[0].energy])
    assert back[0].structure == results[0].structure
    list(resumed.relax_all(samples[:1], [10]))  # another step limit is another relaxation
    assert again.count == 1
    serial = hull_stability(samples, ToyOracle())
    assert hull_stability(samples, CachedRelaxer(CountingRelaxer(), tmp_path / "h.jsonl")).e_above_hull == \
        pytest.approx(serial.e_above_hull)
