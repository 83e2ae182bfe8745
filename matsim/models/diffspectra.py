"""DiffSpectra: molecular structure (2D graph + 3D conformer) from spectra by diffusion, conditioned on a SpecFormer
embedding of the spectrum (Wang et al., arXiv:2507.06853). Our own implementation of the paper's idea.

- **Molecules** (:mod:`matsim.datasets.molecules`): heavy atoms only, hydrogens implicit (QM9: ≤ 9 atoms instead
  of ≤ 29 with H, a 10x smaller pair tensor; the metrics compare InChIKeys, which implicit H determine). Per atom
  its element (one of the training ``species``) and formal charge (one of ``charges``), per pair its bond class
  (none, single, double, triple, aromatic), and 3D positions (Å) centred on the heavy atoms' mean. Molecules are
  padded to the batch's largest with a mask.
- **Noise process**: one Gaussian DDPM for all four parts (continuous one-hot diffusion of the categorical parts,
  as in EDM / JODO), cosine schedule of ``timesteps`` steps. Types, charges and bonds are one-hot vectors in
  {0, 1} noised like numbers; bond noise is symmetric (ε_ij = ε_ji, none on the diagonal); position noise has zero
  mean over each molecule's atoms, so the process stays in the zero-centre-of-geometry subspace (translation is
  factored out). Padding is zero and never noised.
- **Targets and loss**: the network predicts the noise ε of the positions (EDM; MSE) and the clean categories as
  logits (cross-entropy: x0 parametrisation, so that the sampler can plug the predicted probabilities in as the
  clean one-hot estimate). Loss = MSE + ``type_weight``·CE(types) + ``charge_weight``·CE(charges) +
  ``bond_weight``·CE(bonds over atom pairs) + ``count_weight``·CE(number of atoms head) [+ ``contrastive_weight``·
  InfoNCE(spectrum, structure)]. Validation ranks checkpoints by the loss without the count term (``selection``):
  the count head overfits repeated spectra while the denoiser still improves.
- **Denoiser** (:class:`MoleculeDenoiser`): an SE(3)-equivariant graph transformer. Atom states h are invariant,
  pair states e are invariant (bond state + radial basis of the current distances); each block runs attention
  over atom pairs with a per-head bias from e (``scaled_dot_product_attention``), an adaLN-modulated (DiT) feed
  forward, a symmetric pair update from (e_ij, h_i + h_j, distance), and an EGNN coordinate update
  x_i += Σ_j (x_i − x_j)/(d_ij + 1) φ(e_ij) / n, re-centred. Types, charges and bonds come out invariant,
  positions equivariant, everything permutation equivariant. ε̂ = x_out − x_in.
- **Condition**: the spectrum's :class:`~matsim.models.layers.specformer.SpecFormer` embedding, projected and added
  to the time embedding, drives the adaLN of every block. Classifier-free guidance: in training the spectrum is
  replaced by a learned null embedding with probability ``condition_dropout``; molecules without a spectrum
  (``data.structures``: e.g. all of QM9 with rdkit conformers, :meth:`DiffSpectra.training_set`) always train the
  null condition, so the unconditional branch, the structure prior, learns from many more molecules than have
  spectra (the count head and the contrastive term see molecules with spectra only); sampling mixes
  ``out_uncond + w (out_cond − out_uncond)`` (positions' ε and categorical logits) with guidance weight w.
- **Number of atoms**: without a condition, drawn from the training histogram (``atom_count_histogram``); with a
  spectrum, from a small head on its embedding (trained with the count cross-entropy); ``num_atoms`` fixes it.
- **Sampler**: DDIM over an evenly spaced subsequence of ``steps`` time steps with stochasticity ``eta`` (1 with all
  steps: DDPM's ancestral sampler), x0 of the categoricals = softmax of their logits. Decoding: argmax classes,
  :func:`~matsim.datasets.molecules.molecule_from_graph` → a sanitised rdkit ``Mol`` with a conformer, or ``None``.

:meth:`DiffSpectra.sample` returns ``list[Chem.Mol | None]``; ``condition`` = ``{"spectrum": (G,) or (n, G) IR on
the training grid, max-normalised, "num_atoms": int}`` (each optional).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from matsim.core.config import StrictModel, validate_config
from matsim.core.errors import ConfigError
from matsim.datasets.molecules import BOND_TYPES, MoleculeBatch, MoleculeSpectraDataset, molecule_from_graph
from matsim.datasets.spectra import molecule_key
from matsim.models import MODELS
from matsim.models.base import species_lookup
from matsim.models.generative import GenerativeModel
from matsim.models.layers.diffusion import cosine_alphas_bar
from matsim.models.layers.specformer import SpecFormer, info_nce

__all__ = ["DiffSpectra", "DiffSpectraSampler", "MoleculeDenoiser"]

NUM_BONDS = len(BOND_TYPES)
#: Radial basis of pair distances: Gaussians centred on 0..RBF_MAX Å.
RBF_MAX = 8.0


class DiffSpectraSampler(StrictModel):
    """Settings of DiffSpectra's sampler. ``steps``: network evaluations (default all ``timesteps``); ``eta``: 1 for
    DDPM's ancestral noise, 0 for deterministic DDIM; ``guidance``: classifier-free guidance weight of a spectrum
    (1: conditional model only; > 1 strengthens the spectrum, two network calls per step)."""

    steps: int | None = Field(None, ge=1)
    eta: float = Field(1.0, ge=0, le=1)
    guidance: float = Field(1.0, ge=0)


# --- network -----------------------------------------------------------------------------------------------------
def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _centre(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, N, 3) minus its mean over the real atoms of each molecule; padding set to 0."""
    m = mask.unsqueeze(-1).to(x.dtype)
    mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
    return (x - mean) * m


class _Block(nn.Module):
    """One equivariant transformer block: (h (B,N,D), e (B,N,N,E), x (B,N,3), c (B,D), mask) → same."""

    def __init__(self, dim: int, pair_dim: int, heads: int, num_rbf: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads ({heads}) must divide hidden ({dim})")
        self.heads = heads
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.bias = nn.Linear(pair_dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.node_to_pair = nn.Linear(dim, pair_dim)
        self.pair = nn.Sequential(nn.LayerNorm(2 * pair_dim + num_rbf), nn.Linear(2 * pair_dim + num_rbf, pair_dim),
                                  nn.SiLU(), nn.Linear(pair_dim, pair_dim))
        self.coord = nn.Sequential(nn.Linear(pair_dim, pair_dim), nn.SiLU(), nn.Linear(pair_dim, 1))
        nn.init.zeros_(self.coord[-1].weight)
        nn.init.zeros_(self.coord[-1].bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor,
                rbf: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = h.shape
        pair_mask = mask.unsqueeze(1) & mask.unsqueeze(2)  # (B, N, N)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        q, k, v = self.qkv(_modulate(self.norm1(h), shift1, scale1)).view(b, n, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4)
        bias = self.bias(e).permute(0, 3, 1, 2).masked_fill(~pair_mask.unsqueeze(1), -1e9)  # padding keys ignored
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, n, d)
        h = h + gate1.unsqueeze(1) * self.out(attended)
        h = h + gate2.unsqueeze(1) * self.ff(_modulate(self.norm2(h), shift2, scale2))
        h = h * mask.unsqueeze(-1)
        diff = x.unsqueeze(2) - x.unsqueeze(1)  # (B, N, N, 3): x_i - x_j
        dist = diff.norm(dim=-1)
        nodes = self.node_to_pair(h)
        e = e + self.pair(torch.cat([e, nodes.unsqueeze(2) + nodes.unsqueeze(1), rbf(dist)], dim=-1))
        e = e * pair_mask.unsqueeze(-1)
        weights = self.coord(e).squeeze(-1) * pair_mask / (dist + 1.0)  # (B, N, N)
        count = mask.sum(1).clamp(min=1).to(x.dtype).view(b, 1, 1)
        x = _centre(x + (weights.unsqueeze(-1) * diff).sum(2) / count, mask)
        return h, e, x


class _GaussianRBF(nn.Module):
    """Distances (...) Å → (..., num) Gaussians centred evenly on [0, RBF_MAX]."""

    def __init__(self, num: int) -> None:
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, RBF_MAX, num), persistent=False)
        self.gamma = (num / RBF_MAX) ** 2

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (d.unsqueeze(-1) - self.centres) ** 2)


class MoleculeDenoiser(nn.Module):
    """The SE(3)-equivariant denoiser (module docstring).

    Inputs: noisy ``types`` (B, N, K), ``charges`` (B, N, C), ``bonds`` (B, N, N, 5), ``positions`` (B, N, 3) Å
    (zero mean over ``mask`` (B, N)), and ``c`` (B, D) the time + condition embedding. Outputs: type logits
    (B, N, K), charge logits (B, N, C), symmetric bond logits (B, N, N, 5), position noise ε̂ (B, N, 3), atom
    states (B, N, D).
    """

    def __init__(self, num_types: int, num_charges: int, dim: int, pair_dim: int, layers: int, heads: int,
                 num_rbf: int) -> None:
        super().__init__()
        self.rbf = _GaussianRBF(num_rbf)
        self.atom_in = nn.Linear(num_types + num_charges, dim)
        self.pair_in = nn.Linear(NUM_BONDS + num_rbf, pair_dim)
        self.blocks = nn.ModuleList(_Block(dim, pair_dim, heads, num_rbf) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.type_out = nn.Linear(dim, num_types)
        self.charge_out = nn.Linear(dim, num_charges)
        self.bond_out = nn.Sequential(nn.LayerNorm(pair_dim), nn.Linear(pair_dim, NUM_BONDS))

    def forward(self, types: torch.Tensor, charges: torch.Tensor, bonds: torch.Tensor, positions: torch.Tensor,
                c: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pair_mask = (mask.unsqueeze(1) & mask.unsqueeze(2)).unsqueeze(-1)
        h = self.atom_in(torch.cat([types, charges], dim=-1)) * mask.unsqueeze(-1)
        dist = (positions.unsqueeze(2) - positions.unsqueeze(1)).norm(dim=-1)
        e = self.pair_in(torch.cat([bonds, self.rbf(dist)], dim=-1)) * pair_mask
        x = positions
        for block in self.blocks:
            h, e, x = block(h, e, x, c, mask, self.rbf)
        h = self.norm(h)
        bond_logits = self.bond_out(0.5 * (e + e.transpose(1, 2)))
        return self.type_out(h), self.charge_out(h), bond_logits, x - positions, h


def _time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features (B, dim) of time steps t (B,) as fractions of the schedule in [0, 1]."""
    freqs = torch.exp(-math.log(1000.0) * torch.arange(dim // 2, device=t.device) / max(dim // 2 - 1, 1))
    angles = 1000.0 * t.unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


# --- model -------------------------------------------------------------------------------------------------------
@MODELS.register("diffspectra")
class DiffSpectra(GenerativeModel):
    """Diffusion over heavy-atom molecules conditioned on IR spectra (module docstring).

    Args:
        species: atomic numbers of the heavy atoms the model can place (from the training data).
        charges: formal charges it can assign (from the data; always containing 0).
        max_atoms: most heavy atoms of a molecule.
        atom_count_histogram: ``max_atoms + 1`` frequencies of molecules by heavy-atom count (index = count).
        grid_points: points of the IR spectra (3501 on 500-4000 cm⁻¹).
        hidden, pair_hidden, layers, heads: denoiser width (atoms, pairs), blocks and attention heads.
        num_rbf: Gaussians of the pair-distance basis.
        spec_dim, spec_layers, spec_heads, patch_size, patch_stride: the SpecFormer encoder.
        timesteps: diffusion steps T.
        condition_dropout: probability of training a molecule with the null condition (classifier-free guidance).
        type_weight, charge_weight, bond_weight, count_weight, contrastive_weight: loss weights.
        contrastive_temperature: InfoNCE temperature of the spectrum-structure contrastive term.
    """

    sampler_settings: ClassVar[type[StrictModel]] = DiffSpectraSampler
    condition_keys: ClassVar[tuple[str, ...]] = ("spectrum", "num_atoms")
    dataset_kind: ClassVar[str] = "spectra"

    def __init__(
        self,
        species: Sequence[int],
        max_atoms: int,
        atom_count_histogram: Sequence[float],
        grid_points: int,
        charges: Sequence[int] = (0,),
        hidden: int = 128,
        pair_hidden: int = 64,
        layers: int = 6,
        heads: int = 8,
        num_rbf: int = 16,
        spec_dim: int = 128,
        spec_layers: int = 4,
        spec_heads: int = 4,
        patch_size: int = 50,
        patch_stride: int | None = 25,
        timesteps: int = 500,
        condition_dropout: float = 0.1,
        type_weight: float = 1.0,
        charge_weight: float = 1.0,
        bond_weight: float = 1.0,
        count_weight: float = 0.1,
        contrastive_weight: float = 0.0,
        contrastive_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if len(atom_count_histogram) != max_atoms + 1 or sum(atom_count_histogram[1:]) <= 0:
            raise ValueError(f"atom_count_histogram needs max_atoms + 1 = {max_atoms + 1} entries with some "
                             "molecules of at least one atom")
        if 0 not in charges:
            raise ValueError("charges must contain 0")
        self.species, self.charges = [int(z) for z in species], [int(q) for q in charges]
        self.max_atoms, self.timesteps, self.condition_dropout = max_atoms, timesteps, condition_dropout
        self.weights = {"types": type_weight, "charges": charge_weight, "bonds": bond_weight,
                        "num_atoms": count_weight, "contrastive": contrastive_weight}
        self.temperature = contrastive_temperature
        self.register_buffer("alphas_bar", cosine_alphas_bar(timesteps).float(), persistent=False)
        self.register_buffer("count_prior", torch.tensor(atom_count_histogram, dtype=torch.float), persistent=False)
        self.register_buffer("type_index", species_lookup(self.species), persistent=False)
        self.encoder = SpecFormer(grid_points, 1, spec_dim, patch_size, patch_stride, spec_layers, spec_heads)
        self.condition = nn.Linear(spec_dim, hidden)
        self.null = nn.Parameter(torch.zeros(hidden))
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.count_head = nn.Sequential(nn.Linear(spec_dim, spec_dim), nn.SiLU(), nn.Linear(spec_dim, max_atoms + 1))
        self.denoiser = MoleculeDenoiser(len(self.species), len(self.charges), hidden, pair_hidden, layers, heads,
                                         num_rbf)
        if contrastive_weight > 0:
            self.structure_projection = nn.Linear(hidden, spec_dim)
        self.hidden = hidden

    # --- data hooks ----------------------------------------------------------------------------------------------
    @classmethod
    def load_dataset(cls, path: str | Path, max_rows: int | None = None) -> MoleculeSpectraDataset:
        """The molecules and IR spectra of a ``SPECTRA.h5`` file (:mod:`matsim.datasets.molecules`)."""
        return MoleculeSpectraDataset.from_file(path, max_rows=max_rows)

    @classmethod
    def training_set(cls, train: MoleculeSpectraDataset, held_out: MoleculeSpectraDataset,
                     data: Any) -> MoleculeSpectraDataset:
        """``train`` repeated ``data.spectra_repeat`` times, joined by the molecules of ``data.structures`` (if
        given) less every compound of ``held_out``."""
        parts = [train] * data.spectra_repeat
        if data.structures is not None:
            exclude = {molecule_key(s) for s in held_out.smiles}
            parts.append(MoleculeSpectraDataset.from_structures(data.structures, train.grid, exclude=exclude))
        return parts[0] if len(parts) == 1 else MoleculeSpectraDataset.concatenate(parts)

    @classmethod
    def collate(cls, dataset: MoleculeSpectraDataset, indices: Sequence[int]) -> MoleculeBatch:
        return dataset.batch(indices)

    @classmethod
    def data_hyperparameters(cls, train: MoleculeSpectraDataset,
                             valid: MoleculeSpectraDataset | None = None) -> dict[str, Any]:
        """Species and charges of train + valid; atom-count histogram and maximum of train; the grid length."""
        graphs = train.graphs + (valid.graphs if valid is not None else [])
        counts = np.bincount([len(g.numbers) for g in train.graphs])
        max_atoms = max(len(g.numbers) for g in graphs)
        histogram = np.zeros(max_atoms + 1)
        histogram[: len(counts)] = counts / counts.sum()
        return {"species": sorted({int(z) for g in graphs for z in g.numbers}),
                "charges": sorted({0} | {int(q) for g in graphs for q in g.charges}),
                "max_atoms": int(max_atoms), "atom_count_histogram": histogram.tolist(),
                "grid_points": int(train.spectra.shape[1])}

    # --- pieces --------------------------------------------------------------------------------------------------
    def _one_hot(self, batch: MoleculeBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean one-hot types (B,N,K), charges (B,N,C), bonds (B,N,N,5) and class indices of the atom types."""
        types = self.type_index[batch.numbers.clamp(max=len(self.type_index) - 1)]
        unknown = batch.mask & ((types < 0) | (batch.numbers >= len(self.type_index)))
        if unknown.any():
            raise ConfigError(f"element Z={int(batch.numbers[unknown][0])} is not among the model's species")
        charge_values = torch.tensor(self.charges, device=batch.charges.device)
        charge_class = (batch.charges.unsqueeze(-1) == charge_values).float().argmax(-1)
        m = batch.mask.unsqueeze(-1).float()
        pair = (batch.mask.unsqueeze(1) & batch.mask.unsqueeze(2)).unsqueeze(-1).float()
        return (F.one_hot(types.clamp(min=0), len(self.species)).float() * m,
                F.one_hot(charge_class, len(self.charges)).float() * m,
                F.one_hot(batch.bonds, NUM_BONDS).float() * pair, types.clamp(min=0))

    def _noise(self, like: tuple[torch.Tensor, ...], mask: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """Noise of the process's shape for (types, charges, bonds, positions): masked, symmetric bonds without a
        diagonal, zero-mean positions."""
        types, charges, bonds, positions = (torch.randn(x.shape, generator=generator, device=x.device) for x in like)
        m = mask.unsqueeze(-1).float()
        pair = mask.unsqueeze(1) & mask.unsqueeze(2)
        pair = pair & ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
        bonds = (bonds + bonds.transpose(1, 2)) / math.sqrt(2) * pair.unsqueeze(-1)
        return types * m, charges * m, bonds, _centre(positions, mask)

    def embed_spectra(self, spectra: torch.Tensor) -> torch.Tensor:
        """SpecFormer embeddings (B, spec_dim) of spectra (B, M, G)."""
        return self.encoder(spectra)

    def _condition(self, t: torch.Tensor, spectrum_embedding: torch.Tensor | None) -> torch.Tensor:
        """Time (B,) step indices + spectrum embedding (or the null condition) → (B, hidden)."""
        c = self.time(_time_features(t.float() / self.timesteps, self.hidden))
        if spectrum_embedding is None:
            return c + self.null
        return c + self.condition(spectrum_embedding)

    # --- training ------------------------------------------------------------------------------------------------
    def loss(self, batch: MoleculeBatch) -> dict[str, torch.Tensor]:
        mask = batch.mask
        b = batch.num_systems
        types, charges, bonds, type_class = self._one_hot(batch)
        clean = (types, charges, bonds, batch.positions)
        noise = self._noise(clean, mask)
        t = torch.randint(0, self.timesteps, (b,), device=mask.device)
        a = self.alphas_bar[t]
        noisy = [a.sqrt().view(-1, *[1] * (x.dim() - 1)) * x + (1 - a).sqrt().view(-1, *[1] * (x.dim() - 1)) * z
                 for x, z in zip(clean, noise)]
        has = batch.has_spectrum
        embedding = self.embed_spectra(batch.spectra[has]) if has.any() else None  # (S, spec_dim)
        conditioned = has.clone()
        if self.training and self.condition_dropout > 0:
            conditioned &= torch.rand(b, device=mask.device) >= self.condition_dropout
        c = self._condition(t, None)
        if conditioned.any():
            rows = conditioned.nonzero().squeeze(1)
            c = c.index_put((rows,), self._condition(t[rows], embedding[conditioned[has]]))
        type_logits, charge_logits, bond_logits, eps, h = self.denoiser(*noisy, c, mask)
        charge_class = charges.argmax(-1)
        upper = torch.triu(mask.unsqueeze(1) & mask.unsqueeze(2), diagonal=1)
        count = mask.sum(1)
        terms = {
            "positions": ((eps - noise[3]) ** 2).sum(-1)[mask].mean(),
            "types": F.cross_entropy(type_logits[mask], type_class[mask]),
            "charges": F.cross_entropy(charge_logits[mask], charge_class[mask]),
            "bonds": F.cross_entropy(bond_logits[upper], batch.bonds[upper]) if upper.any() else eps.sum() * 0,
            "num_atoms": (F.cross_entropy(self.count_head(embedding), count[has].clamp(max=self.max_atoms))
                          if embedding is not None else eps.sum() * 0),
        }
        if self.weights["contrastive"] > 0:
            terms["contrastive"] = eps.sum() * 0
            if has.sum() > 1:
                zero = torch.zeros_like(t)
                *_, h_clean = self.denoiser(*clean, self._condition(zero, None), mask)
                pooled = (h_clean * mask.unsqueeze(-1)).sum(1) / count.clamp(min=1).unsqueeze(-1)
                terms["contrastive"] = info_nce(embedding, self.structure_projection(pooled[has]), self.temperature)
        total = terms["positions"] + sum(self.weights[k] * v for k, v in terms.items() if k != "positions")
        # checkpoints are chosen on the denoising terms: the atom-count head overfits the (repeated) spectra long
        # before the denoiser stops improving (benchmarks/spectra/README.md, v1)
        selection = total - self.weights["num_atoms"] * terms["num_atoms"]
        return {"loss": total, "selection": selection.detach(), **{k: v.detach() for k, v in terms.items()}}

    # --- sampling ------------------------------------------------------------------------------------------------
    def check_condition(self, condition: Mapping[str, Any] | None) -> None:
        super().check_condition(condition)
        condition = condition or {}
        if "num_atoms" in condition and not (isinstance(condition["num_atoms"], int)
                                             and 1 <= condition["num_atoms"] <= self.max_atoms):
            raise ConfigError(f"condition.num_atoms: a whole number from 1 to {self.max_atoms} (the model's most)")
        if "spectrum" in condition:
            points = self.encoder.grid_points[0]
            shape = tuple(np.shape(condition["spectrum"]))
            if len(shape) not in (1, 2) or shape[-1] != points:
                raise ConfigError(f"condition.spectrum: (G,) or (n, G) spectra with G = {points} points (the "
                                  f"model's grid), got shape {shape}")

    @torch.no_grad()
    def sample(self, n: int, condition: Mapping[str, Any] | None = None, generator: torch.Generator | None = None,
               **settings: Any) -> list[Any]:
        """``n`` molecules (rdkit ``Mol`` with implicit H and a 3D conformer of the heavy atoms, ``None`` where the
        decoded graph is not a valid connected molecule); ``condition`` and ``settings`` as in the module docstring."""
        self.check_condition(condition)
        options = validate_config(DiffSpectraSampler, settings, source="sampler")
        condition = condition or {}
        device = self.alphas_bar.device
        embedding = None
        if "spectrum" in condition:
            spectra = torch.as_tensor(np.asarray(condition["spectrum"]), dtype=torch.float, device=device)
            spectra = spectra.expand(n, -1) if spectra.dim() == 1 else spectra
            if len(spectra) != n:
                raise ConfigError(f"condition.spectrum: {len(spectra)} spectra for {n} samples")
            embedding = self.embed_spectra(spectra.unsqueeze(1))
        counts = self._atom_counts(n, condition.get("num_atoms"), embedding, generator)
        mask = torch.arange(int(counts.max()), device=device) < counts.unsqueeze(1)
        k, c_, nn_ = len(self.species), len(self.charges), mask.shape[1]
        shapes = (torch.empty(n, nn_, k, device=device), torch.empty(n, nn_, c_, device=device),
                  torch.empty(n, nn_, nn_, NUM_BONDS, device=device), torch.empty(n, nn_, 3, device=device))
        state = list(self._noise(shapes, mask, generator))
        steps = options.steps or self.timesteps
        times = torch.linspace(self.timesteps - 1, 0, min(steps, self.timesteps), device=device).round().long()
        for i, t in enumerate(times.tolist()):
            logits, eps = self._guided(state, t, embedding, mask, options.guidance)
            a_t = self.alphas_bar[t]
            x0 = [F.softmax(x, dim=-1) for x in logits]
            x0.append((state[3] - (1 - a_t).sqrt() * eps) / a_t.sqrt())
            if i == len(times) - 1:
                break
            a_s = self.alphas_bar[times[i + 1]]
            sigma = options.eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).clamp(min=0).sqrt()
            noise = self._noise(shapes, mask, generator)
            new = []
            for x, clean, z in zip(state, x0, noise):
                eps_x = (x - a_t.sqrt() * clean) / (1 - a_t).sqrt()
                new.append(a_s.sqrt() * clean + (1 - a_s - sigma ** 2).clamp(min=0).sqrt() * eps_x + sigma * z)
            state = self._mask_state(new, mask)
        return self._decode(logits, x0[3], mask)

    def _mask_state(self, state: list[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
        m = mask.unsqueeze(-1).float()
        pair = (mask.unsqueeze(1) & mask.unsqueeze(2)).unsqueeze(-1).float()
        return [state[0] * m, state[1] * m, state[2] * pair, _centre(state[3], mask)]

    def _guided(self, state: list[torch.Tensor], t: int, embedding: torch.Tensor | None, mask: torch.Tensor,
                guidance: float) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Categorical logits (types, charges, bonds) and position noise at step t, with classifier-free guidance."""
        steps = torch.full((len(mask),), t, device=mask.device)
        out = self.denoiser(*state, self._condition(steps, embedding), mask)[:4]
        if embedding is not None and guidance != 1.0:
            uncond = self.denoiser(*state, self._condition(steps, None), mask)[:4]
            out = tuple(u + guidance * (o - u) for o, u in zip(out, uncond))
        return list(out[:3]), out[3]

    def _atom_counts(self, n: int, fixed: int | None, embedding: torch.Tensor | None,
                     generator: torch.Generator | None) -> torch.Tensor:
        """(n,) heavy-atom counts: ``fixed``, or drawn from the spectrum's count head, or the training histogram."""
        device = self.alphas_bar.device
        if fixed is not None:
            return torch.full((n,), fixed, device=device)
        if embedding is not None:
            probs = F.softmax(self.count_head(embedding), dim=-1)
        else:
            probs = self.count_prior.expand(n, -1)
        probs = probs.clone()
        probs[:, 0] = 0  # at least one atom
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    def _decode(self, logits: list[torch.Tensor], positions: torch.Tensor, mask: torch.Tensor) -> list[Any]:
        types = logits[0].argmax(-1).cpu().numpy()
        charges = logits[1].argmax(-1).cpu().numpy()
        bond_logits = logits[2]
        bonds = (0.5 * (bond_logits + bond_logits.transpose(1, 2))).argmax(-1).cpu().numpy()
        positions, mask = positions.cpu().numpy(), mask.cpu().numpy()
        molecules = []
        for i in range(len(mask)):
            k = int(mask[i].sum())
            bonds_i = bonds[i, :k, :k].copy()
            np.fill_diagonal(bonds_i, 0)
            molecules.append(molecule_from_graph([self.species[j] for j in types[i, :k]],
                                                 [self.charges[j] for j in charges[i, :k]], bonds_i,
                                                 positions[i, :k]))
        return molecules
