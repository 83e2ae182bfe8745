"""Turn the fine-tuned electrolyte checkpoint into the shipped pretrained model (D3(BJ) switched on).

    python benchmarks/electrolyte/ship.py runs/electrolyte-finetune/best.pt \
        --output matsim/models/pretrained/electrolyte-small.pt --dispersion b3lyp --caveat "$(cat CAVEAT.txt)"

The short-range and Coulomb terms were fitted to dispersion-free B3LYP/def2-SVP clusters; the shipped model is the
same network with the D3(BJ) term for B3LYP added (BAMBOO's recipe: dispersion at inference, not in the fit). D3 has
no trainable weights, so the weights load unchanged (checked by :func:`matsim.train.finetune.switched_model`: every
parameter comes from the checkpoint). The parent checkpoint (path, sha256) and its errors are recorded in
the shipped file's metadata.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import matsim.models
from matsim.core.checkpoint import load_checkpoint
from matsim.datasets.graphs import file_digest
from matsim.train.finetune import switched_model

LEVEL_OF_THEORY = "B3LYP/def2-SVP (PySCF, density fitting), no dispersion in the fit; D3(BJ) added at inference"


def ship(parent: Path, output: Path, dispersion: str | None, caveat: str | None = None,
         level_of_theory: str = LEVEL_OF_THEORY) -> Path:
    """Write ``parent`` with ``dispersion`` switched on to ``output``; return the path. A ``caveat`` is stored in
    the metadata, and ``matsim md run`` prints it whenever the model is used; ``level_of_theory`` names the labels."""
    checkpoint = load_checkpoint(parent)
    model = switched_model(checkpoint, str(parent), dispersion=dispersion)
    errors_file = parent.parent / "errors.json"
    metadata = {
        **checkpoint.metadata,
        "level_of_theory": level_of_theory,
        "dispersion_at_inference": dispersion,
        "parent": {"path": str(parent), "sha256": file_digest(parent)},
        "parent_errors": json.loads(errors_file.read_text()) if errors_file.is_file() else None,
        "shipped": datetime.date.today().isoformat(),
    }
    if caveat:
        metadata["caveat"] = caveat
    return matsim.models.save_model(model, output, statistics=checkpoint.statistics, metadata=metadata)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="fine-tuned checkpoint (best.pt)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--dispersion", default="b3lyp", help="D3(BJ) parameters by functional; 'none' for none")
    parser.add_argument("--caveat", default=None, help="known limits every user of the model must hear about")
    parser.add_argument("--level-of-theory", default=LEVEL_OF_THEORY, help="the fit's labels, as in a paper")
    args = parser.parse_args()
    dispersion = None if args.dispersion.lower() == "none" else args.dispersion
    path = ship(args.checkpoint, args.output, dispersion, args.caveat, args.level_of_theory)
    print(f"{path}: {path.stat().st_size / 1024:.0f} KiB, sha256 {file_digest(path)[:16]}…")


if __name__ == "__main__":
    main()
