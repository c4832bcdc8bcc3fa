"""Card data: catalogue and importers, card renderer, camera simulator, splits, torch datasets."""
from .camera import Photo, simulate_crop, simulate_photo
from .catalogue import Card, Catalogue, scans_catalogue, scans_catalogue_from_store, synthetic_catalogue, validate_card_id
from .datasets import (CropDataset, GroupedBatchSampler, PairDataset, ReferenceDataset, SimulatedCropDataset,
                       default_labels, make_loader, seed_worker)
from .render import render_card
from .splits import Splits, make_splits, photo_plan

__all__ = ["Card", "Catalogue", "CropDataset", "GroupedBatchSampler", "PairDataset", "Photo", "ReferenceDataset",
           "SimulatedCropDataset", "Splits", "default_labels", "make_loader", "make_splits", "photo_plan", "render_card",
           "scans_catalogue", "scans_catalogue_from_store", "seed_worker", "simulate_crop", "simulate_photo",
           "synthetic_catalogue", "validate_card_id"]
