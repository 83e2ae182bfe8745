"""Analysis of electrolyte MD: density, RDF and coordination, Li+ solvation, diffusion, conductivity, viscosity, and
whether the molecules kept their bonds (:mod:`matsim.md.analysis.topology`).

The functions below are pure numpy/scipy on arrays; every physical value comes with a standard error.
Conventions: positions (F, N, 3) in Å for F frames and N atoms (or molecules); cells (F, 3, 3) with cell vectors as
rows in Å; time in fs (``dt_fs`` is the time between stored frames); stress (F, 3, 3) or Voigt (F, 6) in eV/Å³;
temperature in K; volume in Å³.

Uncertainties: time series use Flyvbjerg–Petersen block averaging (J. Chem. Phys. 91, 461 (1989)). Diffusion
coefficients, conductivities and viscosities take their value from the whole trajectory (all time origins) and their
standard error from the spread of the same estimate over ``n_blocks`` contiguous blocks of it.

kinisi 2.1 (Bayesian MSD regression with the MSD covariance) installs here but was left out: it pulls scipp, dynesty,
emcee, statsmodels and scikit-learn, wants its own parser objects, and its sampling costs seconds to minutes per
species; the block estimate is cheap and transparent, and kinisi remains a candidate benchmark peer.
"""

from matsim.md.analysis.statistics import (
    Estimate,
    BlockAverage,
    block_average,
    A2_PER_FS_TO_CM2_PER_S,
    S_PER_M_TO_MS_PER_CM,
    EV_FS_PER_A3_TO_MPA_S,
)
from matsim.md.analysis.structure import (
    RDF,
    rdf,
    first_minimum,
    coordination_numbers,
    solvation_shells,
    SolvationShells,
)
from matsim.md.analysis.transport import (
    unwrap_positions,
    molecule_centres,
    mean_squared_displacement,
    EinsteinFit,
    diffusion_coefficient,
    nernst_einstein_conductivity,
    einstein_conductivity,
    GreenKubo,
    green_kubo_viscosity,
)
from matsim.md.analysis.topology import (
    BondTopology,
    TopologyReport,
    bond_topology,
    topology_changes,
)
from matsim.md.analysis.trajectory import (
    AnalysisConfig,
    TrajectoryAnalysis,
    analyze_trajectory,
    trajectory_summary,
    select_atoms,
    AnalysisOptions,
)

__all__ = [
    "BondTopology",
    "TopologyReport",
    "bond_topology",
    "topology_changes",
    "Estimate",
    "BlockAverage",
    "block_average",
    "RDF",
    "rdf",
    "first_minimum",
    "coordination_numbers",
    "solvation_shells",
    "unwrap_positions",
    "molecule_centres",
    "mean_squared_displacement",
    "EinsteinFit",
    "SolvationShells",
    "diffusion_coefficient",
    "nernst_einstein_conductivity",
    "einstein_conductivity",
    "GreenKubo",
    "green_kubo_viscosity",
    "AnalysisConfig",
    "TrajectoryAnalysis",
    "analyze_trajectory",
    "trajectory_summary",
    "select_atoms",
    "A2_PER_FS_TO_CM2_PER_S",
    "S_PER_M_TO_MS_PER_CM",
    "AnalysisOptions",
    "EV_FS_PER_A3_TO_MPA_S",
]
