"""Datasets: reading labelled frames (extxyz, ASE db) with configurable keys, statistics (E0s, force RMS, mean
neighbors), train/validation splits, and cached graph datasets for training."""

from matsim.datasets.atoms import TARGETS, DataKeys, MissingKeyError, frame_targets, read_frames
from matsim.datasets.graphs import GraphDataset, default_cache_dir, file_digest
from matsim.datasets.splits import Split, explicit_split, load_split, random_split, save_split
from matsim.datasets.statistics import (
    DatasetStatistics,
    e0s_from_isolated_atoms,
    e0s_least_squares,
    force_rms,
    mean_num_neighbors,
    normalise_e0s,
)

__all__ = [
    "TARGETS",
    "DataKeys",
    "MissingKeyError",
    "frame_targets",
    "read_frames",
    "GraphDataset",
    "default_cache_dir",
    "file_digest",
    "Split",
    "explicit_split",
    "load_split",
    "random_split",
    "save_split",
    "DatasetStatistics",
    "e0s_from_isolated_atoms",
    "e0s_least_squares",
    "force_rms",
    "mean_num_neighbors",
    "normalise_e0s",
]
