"""CDVAE: crystal diffusion variational autoencoder (Xie, Fu, Ganea, Barzilay & Jaakkola, ICLR 2022).

Our own implementation of the paper's model:

- **Encoder.** A periodic GNN reads a crystal (atom types, fractional coordinates, lattice) and gives the mean and
  log-variance of a latent z (``latent_dim``). CDVAE uses DimeNet++; we use PaiNN (:mod:`matsim.models.layers.painn`)
  on the same periodic radius graph: comparable accuracy with pair messages only (no triplets, so O(E) instead of
  O(E·k)), and the latent is invariant to rotations, translations, atom permutations and the cell origin by
  construction (mean pooling of invariant features).
- **Property predictors on z** (MLPs, ``head_layers`` hidden layers): number of atoms (classes 0..max_atoms),
  lattice (lengths / N^(1/3) and angles, standardised with training-set statistics), composition (a distribution
  over the training species) and, when trained with a property, that property (standardised).
- **Decoder = score network.** PaiNN on the *noisy* structure, each atom's input the embedding of its (noisy) type
  concatenated with z, predicts a per-atom Cartesian vector (an equivariant gated sum of the vector features;
  CDVAE uses GemNet-T) and per-atom type logits. Training is denoising score matching (NCSN): each crystal gets a
  level σ from a geometric schedule (``sigma_begin`` → ``sigma_end``, ``num_noise_levels``), Cartesian Gaussian
  noise of width σ is added and wrapped back into the cell; the target is the minimum-image displacement from the
  noisy to the clean position, and the loss is ½‖d_pred - Δ/σ‖² (the σ²-weighted score loss with score = d_pred/σ).
  Types are noised as in CDVAE: each atom's type is redrawn from one-hot(type) + σ_type · p_composition(z), and
  the cross-entropy is divided by σ_type. The lattice and number of atoms are teacher-forced in training.
- **Loss** = cost_natom·CE(N) + cost_lattice·MSE(lattice) + cost_composition·CE(composition) + cost_coord·coord
  + cost_type·type + beta·KL + cost_property·MSE(property), with CDVAE's default weights.
- **Sampling** (:meth:`CDVAE.sample`): z ~ N(0, I) → N (argmax), lattice, a composition drawn from p_composition,
  uniformly random fractional coordinates → annealed Langevin dynamics over ``n_levels`` geometric noise levels ×
  ``steps_per_level`` steps, step size ``step_lr``·(σ/σ_min)²; atom types are the decoder's argmax at every step.
  CDVAE's setting is 50 × 100; both numbers and the step size are settings (:class:`LangevinSettings`), and the
  whole batch of samples moves together.
- :meth:`CDVAE.reconstruct` decodes the latent means of given crystals; :meth:`CDVAE.optimize` runs gradient
  descent on z against the property head (CDVAE's property optimisation) and decodes the result.

Units: Å, degrees, the property in the units of its CSV column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from pymatgen.core import Element, Structure
from torch import nn

from matsim.core.config import StrictModel, validate_config
from matsim.core.errors import ConfigError
from matsim.datasets.crystals import CrystalBatch, CrystalDataset, structure_from_arrays
from matsim.models import MODELS
from matsim.models.base import sorted_species, species_lookup
from matsim.models.generative import GenerativeModel, composition_counts
from matsim.models.layers.mlp import MLP
from matsim.models.layers.painn import PaiNN
from matsim.models.layers.periodic import (
    cart_to_frac,
    frac_to_cart,
    image_shifts,
    lattice_from_parameters,
    minimum_image,
    periodic_radius_graph,
    sigma_schedule,
)

__all__ = ["CDVAE", "LangevinSettings"]

#: Guards on decoded lattices (an untrained or extrapolating lattice head can propose any numbers).
MIN_LENGTH, MIN_ANGLE, MAX_ANGLE = 1.0, 20.0, 160.0


class LangevinSettings(StrictModel):
    """Settings of CDVAE's annealed Langevin sampler.

    ``n_levels`` geometric noise levels from the model's ``sigma_begin`` to ``sigma_end`` (default: the training
    schedule's ``num_noise_levels``), ``steps_per_level`` steps at each, step size ``step_lr``·(σ/σ_end)²; levels
    below ``min_sigma`` are skipped. ``final_denoise`` adds one noise-free step of size σ_end² at the end (Tweedie's
    estimate of the clean positions; off in CDVAE). ``property_steps`` / ``property_lr``: Adam steps and rate of the
    latent optimisation used by a ``property`` condition.
    """

    n_levels: int | None = Field(None, ge=1)
    steps_per_level: int = Field(100, ge=1)
    step_lr: float = Field(1e-4, gt=0)
    min_sigma: float = Field(0.0, ge=0)
    final_denoise: bool = False
    property_steps: int = Field(200, ge=1)
    property_lr: float = Field(0.05, gt=0)


@MODELS.register("cdvae")
class CDVAE(GenerativeModel):
    """Crystal diffusion VAE (see the module docstring).

    Args:
        species: atomic numbers the model can place (filled from the training data).
        max_atoms: largest number of atoms per crystal (filled from the training data).
        lattice_mean, lattice_std: mean and std of (a, b, c) / N^(1/3) in Å and (α, β, γ) in degrees, (6,) each.
        property_mean, property_std: statistics of the training property; ``None``: no property head.
        hidden: width of the GNNs and MLPs.
        latent_dim: size of z.
        encoder_layers, decoder_layers: PaiNN layers.
        head_layers: hidden layers of the MLP heads on z (CDVAE's ``fc_num_layers``).
        cutoff: radius of the periodic graphs, Å.
        max_neighbors: nearest neighbours kept per atom (CDVAE: 20); ``None`` keeps all within the cutoff (exactly
            invariant and smooth; see :func:`~matsim.models.layers.periodic.periodic_radius_graph`).
        num_radial: Bessel basis size.
        avg_num_neighbors: message normalisation of the GNNs.
        sigma_begin, sigma_end, num_noise_levels: coordinate noise levels, Å (geometric).
        type_sigma_begin, type_sigma_end: type noise levels (same count).
        cost_natom, cost_lattice, cost_composition, cost_coord, cost_type, cost_property, beta: loss weights.
    """

    sampler_settings = LangevinSettings
    condition_keys = ("num_atoms", "composition", "property")

    def __init__(
        self,
        species: Sequence[int] = tuple(range(1, 101)),
        max_atoms: int = 20,
        lattice_mean: Sequence[float] = (3.0, 3.0, 3.0, 90.0, 90.0, 90.0),
        lattice_std: Sequence[float] = (1.0, 1.0, 1.0, 10.0, 10.0, 10.0),
        property_mean: float | None = None,
        property_std: float | None = None,
        hidden: int = 128,
        latent_dim: int = 256,
        encoder_layers: int = 4,
        decoder_layers: int = 4,
        head_layers: int = 1,
        cutoff: float = 7.0,
        max_neighbors: int | None = None,
        num_radial: int = 16,
        avg_num_neighbors: float = 50.0,
        sigma_begin: float = 10.0,
        sigma_end: float = 0.01,
        num_noise_levels: int = 50,
        type_sigma_begin: float = 5.0,
        type_sigma_end: float = 0.01,
        cost_natom: float = 1.0,
        cost_lattice: float = 10.0,
        cost_composition: float = 1.0,
        cost_coord: float = 10.0,
        cost_type: float = 1.0,
        cost_property: float = 1.0,
        beta: float = 0.01,
    ) -> None:
        super().__init__()
        species = sorted_species(species)
        if len(lattice_mean) != 6 or len(lattice_std) != 6:
            raise ValueError("lattice_mean and lattice_std need 6 numbers: a, b, c / N^(1/3) and alpha, beta, gamma")
        self.num_species = len(species)
        self.max_atoms = int(max_atoms)
        self.latent_dim = int(latent_dim)
        self.cutoff = float(cutoff)
        self.max_neighbors = max_neighbors
        self.sigma_begin, self.sigma_end = float(sigma_begin), float(sigma_end)
        self.costs = {"natom": cost_natom, "lattice": cost_lattice, "composition": cost_composition,
                      "coord": cost_coord, "type": cost_type, "property": cost_property, "kl": beta}
        self.register_buffer("species_index", species_lookup(species), persistent=False)
        self.register_buffer("species", torch.tensor(species, dtype=torch.long), persistent=False)
        self.register_buffer("lattice_mean", torch.tensor(lattice_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("lattice_std", torch.tensor(lattice_std, dtype=torch.float32), persistent=False)
        self.register_buffer("sigmas", sigma_schedule(sigma_begin, sigma_end, num_noise_levels).float(),
                             persistent=False)
        self.register_buffer("type_sigmas", sigma_schedule(type_sigma_begin, type_sigma_end, num_noise_levels).float(),
                             persistent=False)
        self.property_mean = None if property_mean is None else float(property_mean)
        self.property_std = None if property_std is None else float(property_std)

        gnn = dict(channels=hidden, cutoff=cutoff, num_radial=num_radial, avg_num_neighbors=avg_num_neighbors)
        self.encoder_embedding = nn.Embedding(self.num_species, hidden)
        self.encoder = PaiNN(num_layers=encoder_layers, **gnn)
        self.encoder_out = MLP([hidden, hidden, latent_dim])
        self.fc_mu = nn.Linear(latent_dim, latent_dim)
        self.fc_logvar = nn.Linear(latent_dim, latent_dim)

        def head(out: int) -> MLP:
            return MLP([latent_dim] + [hidden] * head_layers + [out])

        self.num_atoms_head = head(self.max_atoms + 1)
        self.lattice_head = head(6)
        self.composition_head = head(self.num_species)
        self.property_head = head(1) if property_mean is not None else None

        self.decoder_embedding = nn.Embedding(self.num_species, hidden)
        self.decoder_in = nn.Linear(hidden + latent_dim, hidden)
        self.decoder = PaiNN(num_layers=decoder_layers, **gnn)
        self.coord_gate = MLP([hidden, hidden, hidden])
        self.type_out = MLP([hidden, hidden, self.num_species])

    # --- data ----------------------------------------------------------------------------------------------------
    @classmethod
    def data_hyperparameters(cls, train: CrystalDataset, valid: CrystalDataset | None = None) -> dict[str, Any]:
        """Species and max_atoms of train + valid; lattice and (if the data has one) property statistics of train."""
        sets = [train] + ([valid] if valid is not None and len(valid) else [])
        params = train.lattice_parameters()
        params[:, :3] = params[:, :3] / train.num_atoms().double().unsqueeze(1) ** (1.0 / 3.0)
        std = params.std(dim=0).clamp_min(1e-3) if len(train) > 1 else torch.ones(6, dtype=torch.float64)
        out: dict[str, Any] = {
            "species": sorted(set().union(*(d.species() for d in sets))),
            "max_atoms": max(int(d.num_atoms().max()) for d in sets),
            "lattice_mean": [float(x) for x in params.mean(dim=0)],
            "lattice_std": [float(x) for x in std],
        }
        values = train.properties()
        values = values[torch.isfinite(values)]
        if len(values):
            out["property_mean"] = float(values.mean())
            out["property_std"] = float(values.std().clamp_min(1e-6)) if len(values) > 1 else 1.0
        return out

    def type_index(self, atom_types: torch.Tensor) -> torch.Tensor:
        """Class index (N,) of atomic numbers (N,); a :class:`ConfigError` for an element outside ``species``."""
        index = self.species_index[atom_types]
        if bool((index < 0).any()):
            missing = sorted(set(atom_types[index < 0].tolist()))
            raise ConfigError(f"elements {[Element.from_Z(z).symbol for z in missing]} are not among the model's "
                              "species")
        return index

    # --- networks ------------------------------------------------------------------------------------------------
    def encode(self, batch: CrystalBatch, lattice: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | crystal), each (B, latent_dim).

        ``lattice`` (B, 3, 3) replaces the matrix built from the batch's lengths and angles (any orientation of the
        same cell gives the same latent: the encoder is rotation invariant)."""
        if lattice is None:
            lattice = lattice_from_parameters(batch.lengths, batch.angles)
        edge_index, edge_vec = periodic_radius_graph(batch.frac_coords, lattice, batch.num_atoms, self.cutoff,
                                                     self.max_neighbors)
        s, _ = self.encoder(self.encoder_embedding(self.type_index(batch.atom_types)), edge_index, edge_vec)
        pooled = _per_crystal_mean(s, batch.batch, batch.num_systems)
        h = self.encoder_out(pooled)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_stats(self, z: torch.Tensor, num_atoms: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Number of atoms (B,) (argmax unless given), lattice lengths (B, 3) in Å and angles (B, 3) in degrees,
        composition logits (B, S) from z (B, latent_dim)."""
        if num_atoms is None:
            num_atoms = self.num_atoms_head(z).argmax(dim=1).clamp_min(1)
        params = self.lattice_head(z) * self.lattice_std + self.lattice_mean
        lengths = (params[:, :3] * num_atoms.to(z.dtype).unsqueeze(1) ** (1.0 / 3.0)).clamp_min(MIN_LENGTH)
        angles = params[:, 3:].clamp(MIN_ANGLE, MAX_ANGLE)
        return num_atoms, lengths, angles, self.composition_head(z)

    def denoise(self, z: torch.Tensor, frac: torch.Tensor, types: torch.Tensor, num_atoms: torch.Tensor,
                lattice: torch.Tensor, batch: torch.Tensor,
                images: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Score network: per-atom Cartesian displacement d (N, 3) in Å (score = d / σ) and type logits (N, S) of
        a noisy structure (``types`` are class indices, ``lattice`` (B, 3, 3); ``images``: see
        :func:`~matsim.models.layers.periodic.periodic_radius_graph`)."""
        edge_index, edge_vec = periodic_radius_graph(frac, lattice, num_atoms, self.cutoff, self.max_neighbors,
                                                     images)
        s = self.decoder_in(torch.cat([self.decoder_embedding(types), z[batch]], dim=1))
        s, v = self.decoder(s, edge_index, edge_vec)
        displacement = (v * self.coord_gate(s).unsqueeze(1)).sum(dim=2)
        return displacement, self.type_out(s)

    def predict_property(self, z: torch.Tensor) -> torch.Tensor:
        """Property (B,) in the units of the training column, from z (B, latent_dim)."""
        if self.property_head is None:
            raise ConfigError("this CDVAE was trained without a property (data.property): no property head")
        return self.property_head(z).squeeze(1) * self.property_std + self.property_mean

    # --- training ------------------------------------------------------------------------------------------------
    def loss(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        """CDVAE's loss terms of a batch and their weighted sum ``"loss"`` (see the module docstring)."""
        num = batch.num_systems
        target_types = self.type_index(batch.atom_types)
        mu, logvar = self.encode(batch)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

        terms: dict[str, torch.Tensor] = {}
        terms["natom"] = F.cross_entropy(self.num_atoms_head(z), batch.num_atoms.clamp_max(self.max_atoms))
        target_lattice = torch.cat([batch.lengths / batch.num_atoms.to(z.dtype).unsqueeze(1) ** (1.0 / 3.0),
                                    batch.angles], dim=1)
        terms["lattice"] = F.mse_loss(self.lattice_head(z), (target_lattice - self.lattice_mean) / self.lattice_std)
        composition_logits = self.composition_head(z)
        terms["composition"] = _per_crystal_mean(
            F.cross_entropy(composition_logits[batch.batch], target_types, reduction="none"), batch.batch, num).mean()

        # noise: one level per crystal, Cartesian Gaussian noise wrapped into the cell, types redrawn
        level = torch.randint(0, self.sigmas.shape[0], (num,), device=z.device)
        sigma = self.sigmas[level][batch.batch].unsqueeze(1)
        type_sigma = self.type_sigmas[level][batch.batch]
        lattice = lattice_from_parameters(batch.lengths, batch.angles)
        noise = cart_to_frac(torch.randn_like(batch.frac_coords) * sigma, lattice, batch.batch)
        noisy_frac = torch.remainder(batch.frac_coords + noise, 1.0)
        probs = F.one_hot(target_types, self.num_species).to(z.dtype) \
            + F.softmax(composition_logits.detach(), dim=1)[batch.batch] * type_sigma.unsqueeze(1)
        noisy_types = torch.multinomial(probs, 1).squeeze(1)
        displacement, type_logits = self.denoise(z, noisy_frac, noisy_types, batch.num_atoms, lattice, batch.batch)

        target = minimum_image(batch.frac_coords - noisy_frac, lattice, batch.batch) / sigma
        terms["coord"] = _per_crystal_mean(0.5 * ((displacement - target) ** 2).sum(dim=1), batch.batch, num).mean()
        terms["type"] = _per_crystal_mean(F.cross_entropy(type_logits, target_types, reduction="none") / type_sigma,
                                          batch.batch, num).mean()
        terms["kl"] = torch.mean(-0.5 * torch.sum(1.0 + logvar - mu**2 - logvar.exp(), dim=1))
        if self.property_head is not None:
            known = torch.isfinite(batch.property)
            predicted = self.property_head(z).squeeze(1)[known]
            target_property = (batch.property[known] - self.property_mean) / self.property_std
            terms["property"] = F.mse_loss(predicted, target_property) if bool(known.any()) else z.new_zeros(())
        total = sum(self.costs[name] * value for name, value in terms.items())
        return {"loss": total, **{name: value.detach() for name, value in terms.items()}}

    # --- sampling ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def langevin(self, z: torch.Tensor, settings: LangevinSettings, num_atoms: torch.Tensor | None = None,
                 types: torch.Tensor | None = None, generator: torch.Generator | None = None) -> list[Structure | None]:
        """Decode latents z (B, latent_dim) by annealed Langevin dynamics into structures.

        ``num_atoms`` (B,) and ``types`` (N,) class indices, when given, are kept fixed (CDVAE's ``gt_num_atoms``
        / ``gt_atom_types``); otherwise N is the argmax of the head and the types start from a draw of the
        predicted composition and follow the decoder's argmax.
        """
        num_atoms, lengths, angles, composition_logits = self.decode_stats(z, num_atoms)
        batch = torch.repeat_interleave(torch.arange(z.shape[0], device=z.device), num_atoms)
        lattice = lattice_from_parameters(lengths, angles)
        images = image_shifts(lattice, self.cutoff)  # the lattices stay fixed: one image search for all steps
        fixed_types = types is not None
        if types is None:
            types = _draw_composition(F.softmax(composition_logits, dim=1), num_atoms, batch, generator)
        frac = torch.rand(batch.shape[0], 3, device=z.device, dtype=z.dtype, generator=generator)
        levels = sigma_schedule(self.sigma_begin, self.sigma_end, settings.n_levels or self.sigmas.shape[0])
        for sigma in [s for s in levels.tolist() if s >= settings.min_sigma]:
            step = settings.step_lr * (sigma / self.sigma_end) ** 2
            for _ in range(settings.steps_per_level):
                noise = torch.randn(frac.shape, device=z.device, dtype=z.dtype, generator=generator)
                displacement, logits = self.denoise(z, frac, types, num_atoms, lattice, batch, images)
                cart = frac_to_cart(frac, lattice, batch) + step * displacement / sigma + math.sqrt(2 * step) * noise
                frac = torch.remainder(cart_to_frac(cart, lattice, batch), 1.0)
                if not fixed_types:
                    types = logits.argmax(dim=1)
        if settings.final_denoise:
            displacement, logits = self.denoise(z, frac, types, num_atoms, lattice, batch, images)
            cart = frac_to_cart(frac, lattice, batch) + self.sigma_end * displacement
            frac = torch.remainder(cart_to_frac(cart, lattice, batch), 1.0)
            if not fixed_types:
                types = logits.argmax(dim=1)
        return self._structures(frac, self.species[types], num_atoms, lengths, angles)

    def sample(self, n: int, condition: Mapping[str, Any] | None = None, generator: torch.Generator | None = None,
               **settings: Any) -> list[Structure | None]:
        """``n`` crystals from the prior (see the module docstring).

        ``condition`` (optional): ``num_atoms`` (int: every sample has this many atoms), ``composition`` (a formula
        such as ``"CaTiO3"``: atom count and types fixed, as CDVAE's ``gt_atom_types``), ``property`` (a target
        value: z is first moved by gradient descent on (property(z) - target)², ``property_steps`` Adam steps).
        ``settings``: :class:`LangevinSettings` keys. ``generator`` (on the model's device) makes it reproducible.
        """
        options = _settings(settings)
        condition = dict(condition or {})
        self.check_condition(condition)
        device = self.species.device
        z = torch.randn(n, self.latent_dim, device=device, dtype=self.fc_mu.weight.dtype, generator=generator)
        if "property" in condition:
            z = self.optimize_latent(z, target=float(condition["property"]), steps=options.property_steps,
                                     lr=options.property_lr)
        num_atoms = types = None
        if "composition" in condition:
            types_one = self._composition_types(condition["composition"]).to(device)
            num_atoms = torch.full((n,), len(types_one), dtype=torch.long, device=device)
            types = types_one.repeat(n)
        elif "num_atoms" in condition:
            num_atoms = torch.full((n,), int(condition["num_atoms"]), dtype=torch.long, device=device)
        return self.langevin(z, options, num_atoms, types, generator)

    def check_condition(self, condition: Mapping[str, Any] | None) -> None:
        """Unknown keys, a formula with unknown elements or fractional counts, ``num_atoms`` < 1, and ``property``
        without a property head are :class:`ConfigError`."""
        super().check_condition(condition)
        condition = condition or {}
        if "composition" in condition:
            self._composition_types(condition["composition"])
        if "num_atoms" in condition and (not isinstance(condition["num_atoms"], int) or condition["num_atoms"] < 1):
            raise ConfigError(f"condition.num_atoms: a whole number ≥ 1, got {condition['num_atoms']!r}")
        if "property" in condition:
            if self.property_head is None:
                raise ConfigError("condition.property: this CDVAE was trained without a property (data.property)")
            if not isinstance(condition["property"], (int, float)) or not math.isfinite(condition["property"]):
                raise ConfigError(f"condition.property: a number, got {condition['property']!r}")

    def reconstruct(self, batch: CrystalBatch, generator: torch.Generator | None = None, force_num_atoms: bool = False,
                    force_atom_types: bool = False, **settings: Any) -> list[Structure | None]:
        """Decode the latent means of ``batch`` (CDVAE's reconstruction; optionally with its true N / types)."""
        with torch.no_grad():
            mu, _ = self.encode(batch)
        num_atoms = batch.num_atoms if force_num_atoms or force_atom_types else None
        types = self.type_index(batch.atom_types) if force_atom_types else None
        return self.langevin(mu, _settings(settings), num_atoms, types, generator)

    def optimize_latent(self, z: torch.Tensor, target: float | None = None, steps: int = 200, lr: float = 0.05,
                        maximize: bool = False) -> torch.Tensor:
        """Move latents z (B, latent_dim) by Adam on the property head: towards ``target`` (squared error) or to
        lower (``maximize=False``) / higher property values. Returns the final z (detached)."""
        if self.property_head is None:
            raise ConfigError("property optimisation needs a CDVAE trained with data.property")
        z = z.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=lr)
        sign = -1.0 if maximize else 1.0
        with torch.enable_grad():
            for _ in range(steps):
                value = self.predict_property(z)
                objective = ((value - target) ** 2).sum() if target is not None else sign * value.sum()
                optimizer.zero_grad()
                objective.backward()
                optimizer.step()
        for p in self.parameters():
            p.grad = None  # the property head's gradients are a by-product, not training
        return z.detach()

    def optimize(self, batch: CrystalBatch, target: float | None = None, maximize: bool = False,
                 generator: torch.Generator | None = None, **settings: Any) -> list[Structure | None]:
        """CDVAE's property optimisation: encode ``batch``, optimise the latent means (see :meth:`optimize_latent`),
        decode. ``settings``: :class:`LangevinSettings` (``property_steps`` and ``property_lr`` set the descent)."""
        options = _settings(settings)
        with torch.no_grad():
            mu, _ = self.encode(batch)
        z = self.optimize_latent(mu, target, options.property_steps, options.property_lr, maximize)
        return self.langevin(z, options, generator=generator)

    # --- helpers -------------------------------------------------------------------------------------------------
    def _composition_types(self, formula: str) -> torch.Tensor:
        counts = composition_counts(formula, self.species.tolist())
        numbers = [z for z, c in counts.items() for _ in range(c)]
        return self.type_index(torch.tensor(numbers, dtype=torch.long, device=self.species.device))

    @staticmethod
    def _structures(frac: torch.Tensor, numbers: torch.Tensor, num_atoms: torch.Tensor, lengths: torch.Tensor,
                    angles: torch.Tensor) -> list[Structure | None]:
        counts = num_atoms.tolist()
        fracs = torch.split(frac.double().cpu(), counts)
        types = torch.split(numbers.cpu(), counts)
        return [structure_from_arrays(f.numpy(), t.numpy(), a.numpy(), b.numpy())
                for f, t, a, b in zip(fracs, types, lengths.double().cpu(), angles.double().cpu())]


def _settings(settings: Mapping[str, Any]) -> LangevinSettings:
    """Validated sampler settings (a :class:`ConfigError` naming an unknown key or bad value)."""
    return validate_config(LangevinSettings, dict(settings), source="sampler settings")


def _per_crystal_mean(values: torch.Tensor, batch: torch.Tensor, num: int) -> torch.Tensor:
    """Mean over the atoms of each crystal: (N, ...) → (B, ...)."""
    sums = values.new_zeros((num, *values.shape[1:])).index_add_(0, batch, values)
    counts = values.new_zeros(num).index_add_(0, batch, torch.ones_like(batch, dtype=values.dtype))
    return sums / counts.clamp_min(1).reshape(-1, *([1] * (values.dim() - 1)))


def _draw_composition(probs: torch.Tensor, num_atoms: torch.Tensor, batch: torch.Tensor,
                      generator: torch.Generator | None) -> torch.Tensor:
    """Types (N,) with counts close to N·p for each crystal: systematic sampling of the composition p (B, S).

    Each count is the floor or ceiling of N·p (as CDVAE's rounding, whose leftover atoms it draws at random), with
    one uniform offset per crystal, so a batch is drawn in one vectorised step.
    """
    offset = torch.rand(num_atoms.shape[0], device=probs.device, dtype=probs.dtype, generator=generator)
    start = torch.cumsum(num_atoms, 0) - num_atoms
    rank = torch.arange(batch.shape[0], device=probs.device) - start[batch]
    position = (rank.to(probs.dtype) + offset[batch]) / num_atoms[batch].to(probs.dtype)
    cumulative = torch.cumsum(probs, dim=1)[batch]
    return torch.searchsorted(cumulative, position.unsqueeze(1)).squeeze(1).clamp_max(probs.shape[1] - 1)
