"""Dataset pipeline: kohya folders or TOML -> checked records -> bucketed batches -> tensors."""

from train.data.augment import (
    Augmentation,
    cache_problems,
    crop_top_left,
    draw_augmentation,
    original_size_hw,
    target_size_hw,
)
from train.data.batches import batch_sizes_of, plan_epoch, sample_counts, steps_per_epoch
from train.data.buckets import BucketManager, assign_bucket, make_buckets, select_bucket
from train.data.captions import CaptionProcessor, read_caption, text_cache_problems, use_text_cache
from train.data.dataset import load_dataset
from train.data.images import IMAGE_EXTENSIONS, load_image_tensor, to_rgb_on_white
from train.data.records import (
    ImageRecord,
    count_images_per_subset,
    count_samples_with_repeats,
    dataset_dirs_metadata,
    scan_records,
    tag_frequency,
)
from train.data.sources import DatasetBlueprint, Subset, read_blueprints
from train.data.synthetic import make_synthetic_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "Augmentation",
    "BucketManager",
    "CaptionProcessor",
    "DatasetBlueprint",
    "ImageRecord",
    "Subset",
    "assign_bucket",
    "batch_sizes_of",
    "cache_problems",
    "count_images_per_subset",
    "count_samples_with_repeats",
    "crop_top_left",
    "dataset_dirs_metadata",
    "draw_augmentation",
    "load_dataset",
    "load_image_tensor",
    "make_buckets",
    "make_synthetic_dataset",
    "original_size_hw",
    "plan_epoch",
    "read_blueprints",
    "read_caption",
    "sample_counts",
    "scan_records",
    "select_bucket",
    "steps_per_epoch",
    "tag_frequency",
    "target_size_hw",
    "text_cache_problems",
    "to_rgb_on_white",
    "use_text_cache",
]
