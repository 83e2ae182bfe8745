"""``matsim spectra`` (compute reference IR spectra of SMILES lists into SPECTRA.h5; merge and convert such files;
split them by molecule) and ``matsim elucidate`` (rank candidate structures for spectra).

Register with ``app.add_typer(spectra_app, name="spectra")`` and ``app.command("elucidate")(elucidate)``. rdkit,
h5py and tblite are imported inside the commands, so ``matsim`` starts without them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from matsim.reference.spectra_batch import SpectraSummary

__all__ = ["spectra_app", "elucidate"]

spectra_app = typer.Typer(
    help="IR spectra datasets: compute reference spectra from SMILES, merge files, split them by molecule.",
    no_args_is_help=True, add_completion=False,
)

#: The shipped DiffSpectra model ``matsim elucidate`` uses without ``--model`` (matsim/models/pretrained/).
DEFAULT_ELUCIDATION_MODEL = "diffspectra-qm9"
#: Failures listed after a compute run (the rest are in the file's failed list).
_FAILURES_SHOWN = 20


@spectra_app.callback()
def _spectra() -> None:
    """IR spectra datasets: compute reference spectra from SMILES, merge files, split them by molecule."""


@spectra_app.command("compute")
def compute(
    input_path: Path = typer.Argument(..., metavar="MOLECULES.smi",
                                      help=".smi (SMILES [id] per line) or .csv with a 'smiles' column."),
    output: Path = typer.Option(..., "--output", "-o", help="SPECTRA.h5 (resumed if it exists)."),
    method: str = typer.Option("gfn2", "--method", help="gfn2 | gfn1 | dft (B3LYP/def2-SVP: hours per molecule)."),
    jobs: int | None = typer.Option(None, "--jobs", "-j", help="Worker processes, 1 thread each (default: all cores)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N molecules of the input."),
    optimiser: str = typer.Option("bfgs", "--optimiser", help="bfgs | fire."),
    seed: int = typer.Option(0, "--seed", help="rdkit ETKDG seed of the conformers."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Retry molecules in the file's failed list."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    sticks_only: bool = typer.Option(False, "--sticks-only", help="Store frequencies and intensities only; readers "
                                                                  "rebuild the spectra (~15x smaller file)."),
) -> None:
    """Optimise each molecule with METHOD and write its harmonic IR spectrum (500-4000 cm⁻¹, Lorentzian FWHM
    15 cm⁻¹, max-normalised) with the optimised conformer, frequencies and intensities.

    Molecules already in the output are skipped; molecules without a spectrum go to the file's failed list.
    """
    from matsim.reference.spectra import SpectrumSettings
    from matsim.reference.spectra_batch import compute_spectra

    settings = SpectrumSettings(method=method, optimiser=optimiser, seed=seed)
    with _ProgressBar(enabled=not no_progress) as bar:
        summary = compute_spectra(input_path, output, settings, n_jobs=jobs, limit=limit, retry_failed=retry_failed,
                                  progress=bar.update, store_ir=not sticks_only)
    per_molecule = sum(summary.molecule_seconds) / len(summary.molecule_seconds) if summary.molecule_seconds else 0.0
    typer.echo(f"{summary.output}: computed {summary.done}, skipped {summary.skipped} (already in the file), "
               f"failed {len(summary.failed)}; {summary.wall_seconds:.1f} s wall, {per_molecule:.2f} s per molecule "
               "on one core")
    for mol_id, reason in list(summary.failed.items())[:_FAILURES_SHOWN]:
        typer.echo(f"  {mol_id} failed: {reason}")
    if len(summary.failed) > _FAILURES_SHOWN:
        typer.echo(f"  ... {len(summary.failed) - _FAILURES_SHOWN} more in the file's failed list")


@spectra_app.command("conformers")
def conformers(
    input_path: Path = typer.Argument(..., metavar="MOLECULES.smi",
                                      help=".smi (SMILES [id] per line) or .csv with a 'smiles' column."),
    output: Path = typer.Option(..., "--output", "-o", help="STRUCTURES.h5 to write (replaced when done)."),
    jobs: int | None = typer.Option(None, "--jobs", "-j", help="Worker processes (default: all cores)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N molecules of the input."),
    seed: int = typer.Option(0, "--seed", help="rdkit ETKDG seed of the conformers."),
    n_conformers: int = typer.Option(10, "--conformers", min=1,
                                     help="ETKDG conformers per molecule; the lowest in MMFF94 energy is kept "
                                          "(10: as 'compute' starts from, ~50 ms per QM9 molecule; 1: ~7 ms)."),
) -> None:
    """Write one rdkit conformer per molecule (ETKDGv3, MMFF94-optimised; heavy atoms; no spectra) to
    STRUCTURES.h5: the molecules DiffSpectra learns its structure prior from (``data.structures`` of its training
    config)."""
    from matsim.reference.conformers import compute_conformers

    summary = compute_conformers(input_path, output, n_jobs=jobs, n_conformers=n_conformers, seed=seed, limit=limit)
    typer.echo(f"{summary.output}: {summary.done} conformers, {len(summary.failed)} failed")
    for mol_id, reason in list(summary.failed.items())[:_FAILURES_SHOWN]:
        typer.echo(f"  {mol_id} failed: {reason}")


@spectra_app.command("merge")
def merge(
    inputs: list[Path] = typer.Argument(..., metavar="SPECTRA.h5...", help="Files of one grid and recipe."),
    output: Path = typer.Option(..., "--output", "-o", help="New SPECTRA.h5 (must not exist)."),
    sticks_only: bool = typer.Option(False, "--sticks-only", help="Write frequencies and intensities only; readers "
                                                                  "rebuild the spectra."),
) -> None:
    """Concatenate spectra files computed with one recipe (e.g. shards from several machines; ids must be unique
    across them, failed lists are merged) into OUTPUT, dense or --sticks-only; one input converts a file."""
    from matsim.datasets.spectra import merge_spectra

    summary = merge_spectra(inputs, output, store_ir=not sticks_only)
    kind = "dense" if summary.store_ir else "sticks-only"
    typer.echo(f"{summary.output}: {summary.molecules} molecules and {summary.failed} failures from "
               f"{len(inputs)} files ({kind}, {summary.output.stat().st_size / 2**20:.1f} MiB)")


@spectra_app.command("split")
def split(
    spectra_path: Path = typer.Argument(..., metavar="SPECTRA.h5", help="Spectra file to split."),
    output: Path = typer.Option(..., "--output", "-o", help="Split file (JSON row indices)."),
    kind: str = typer.Option("random", "--kind", help="random (by molecule) | scaffold (Bemis-Murcko)."),
    valid: float = typer.Option(0.1, "--valid", help="Validation fraction."),
    test: float = typer.Option(0.1, "--test", help="Test fraction."),
    seed: int = typer.Option(0, "--seed", help="Shuffle seed."),
) -> None:
    """Split the molecules of SPECTRA.h5 into train / valid / test row indices (all rows of one molecule, or one
    scaffold, on the same side)."""
    from matsim.datasets.spectra import read_spectra, save_spectra_split, split_spectra

    result = split_spectra(read_spectra(spectra_path).smiles, valid=valid, test=test, kind=kind, seed=seed)
    save_spectra_split(result, output)
    typer.echo(f"{output}: train {len(result.train)}, valid {len(result.valid)}, test {len(result.test)} "
               f"({kind}, seed {seed})")


def elucidate(
    spectra_path: Path = typer.Argument(..., metavar="SPECTRA_FILE", help="SPECTRA.h5 of the spectra to explain."),
    model: str = typer.Option(DEFAULT_ELUCIDATION_MODEL, "--model",
                              help="retrieval:TRAIN.h5 (nearest training spectra by cosine), a DiffSpectra checkpoint "
                                   "(.pt) or a shipped model's name (default: the shipped QM9 model)."),
    k: int = typer.Option(20, "-k", help="Candidates per spectrum."),
    json_output: bool = typer.Option(False, "--json", help='Print [{"id", "candidates": [{"smiles", "score"}]}].'),
    samples: int | None = typer.Option(None, "--samples", help="Checkpoint: molecules sampled per spectrum "
                                                               "(default max(2k, 32))."),
    rescore: bool = typer.Option(False, "--rescore", help="Checkpoint: rank by the GFN2 IR of each candidate (slow)."),
    guidance: float = typer.Option(1.0, "--guidance", help="Checkpoint: classifier-free guidance weight."),
    steps: int | None = typer.Option(None, "--steps", help="Checkpoint: sampler steps (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Checkpoint: sampling seed."),
) -> None:
    """Rank candidate structures (SMILES) for each spectrum of SPECTRA_FILE; with known true SMILES, also report
    top-k accuracy and similarity (text output only). A checkpoint samples candidates and ranks them by sample
    frequency (or, with --rescore, by the cosine similarity of their recomputed GFN2 spectra); a model's caveat
    (the shipped one has one) is printed on stderr."""
    from matsim.datasets.spectra import read_spectra

    backend, _, argument = model.partition(":")
    if backend == "retrieval" and argument:
        from matsim.models.spectra_retrieval import SpectraRetrieval

        retrieval = SpectraRetrieval.from_file(argument)
        queries = read_spectra(spectra_path)
        ranked = retrieval.rank(queries.ir, queries.grid, k=k)
    else:
        from matsim.generate.elucidation import elucidate_spectra
        from matsim.models import load_model

        generative = load_model(model)
        caveat = (getattr(generative, "metadata", None) or {}).get("caveat")
        if caveat:
            typer.echo(f"warning: {caveat}", err=True)
        queries = read_spectra(spectra_path)
        ranked = elucidate_spectra(generative, queries.ir, k=k, samples=samples, rescore=rescore, seed=seed,
                                   guidance=guidance, steps=steps)
    if json_output:
        typer.echo(json.dumps([
            {"id": mol_id, "candidates": [{"smiles": c.smiles, "score": round(c.score, 6)} for c in candidates]}
            for mol_id, candidates in zip(queries.ids, ranked)
        ]))
        return
    from matsim.metrics.spectra import evaluate_elucidation

    for mol_id, truth, candidates in zip(queries.ids, queries.smiles, ranked):
        best = ", ".join(f"{c.smiles} ({c.score:.3f})" for c in candidates[:3])
        typer.echo(f"{mol_id} [{truth}]: {best}")
    metrics = evaluate_elucidation([(t, [c.smiles for c in cands]) for t, cands in zip(queries.smiles, ranked)])
    accuracy = ", ".join(f"top-{key} {value:.3f}" for key, value in metrics.top_k.items())
    typer.echo(f"{metrics.n} spectra: {accuracy}; mean max Tanimoto {metrics.max_tanimoto:.3f}, "
               f"top-1 Tanimoto {metrics.top1_tanimoto:.3f}")


class _ProgressBar:
    """A rich progress bar on stderr (molecules done of total, failures), shown from the first update on, and only
    on a terminal (nothing is printed before the input is validated, nothing lands in redirected logs)."""

    def __init__(self, enabled: bool) -> None:
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            console = Console(stderr=True)
            if console.is_terminal:
                self._progress = Progress(TextColumn("spectra {task.description}"), BarColumn(),
                                          MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                                          transient=True)
                self._task = self._progress.add_task("", total=None)

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, summary: "SpectraSummary") -> None:
        """Show the running summary of a compute run."""
        if self._progress is not None:
            self._progress.start()  # no-op once started
            self._progress.update(self._task, total=summary.total,
                                  completed=summary.skipped + summary.done + len(summary.failed),
                                  description=f"({len(summary.failed)} failed)")
