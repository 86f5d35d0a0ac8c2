"""Datasets: metadata, official-format loaders, preparation, synthetic twins, mappers, samplers (docs/ARCHITECTURE.md)."""
from maskformer_core.data.datasets import MapDataset, collate_list, load_split
from maskformer_core.data.mappers import build_mapper
from maskformer_core.data.metadata import DATASETS, DatasetMeta, get_metadata
from maskformer_core.data.prepare import prepare
from maskformer_core.data.sampler import InferenceSampler, TrainingSampler
from maskformer_core.data.synth import synthesize
from maskformer_core.data.validate import validate

__all__ = [
    "DATASETS", "DatasetMeta", "get_metadata", "load_split", "build_mapper", "MapDataset", "collate_list",
    "TrainingSampler", "InferenceSampler", "synthesize", "prepare", "validate",
]
