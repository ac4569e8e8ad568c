"""Data for training and evaluation: sources (CIFAR archives, image folders), an on-disk uint8
tensor cache, batch augmentation on the training device, and deterministic resumable loaders.

    splits = load_data("cifar10", val_split=0.1, seed=0)
    loader = make_loader(splits.train, batch_size=128, train=True, augment=AugmentConfig.preset("he2015"))
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader: ...
"""

from .augment import AugmentConfig, augment_batch, cutout, random_crop, random_flip, random_resized_crop
from .cache import cache_root
from .cifar import CIFAR_ARCHIVES, fetch_cifar, read_cifar_folder, safe_extract, verify_md5
from .datasets import DataSplits, ImageFileDataset, TensorImageDataset
from .errors import DataError
from .folder import class_aliases, imagenet_wnids, map_folder_classes, scan_image_folder, stratified_split
from .loader import InMemoryLoader, StreamingLoader, load_eval_image, make_loader
from .sources import check_source, load_data, load_eval
from .stats import KNOWN_STATS, compute_mean_std
from .synthetic import class_names, make_image_folder, make_split_folder, make_tensor_dataset, synthetic_images

__all__ = [
    "AugmentConfig", "CIFAR_ARCHIVES", "DataError", "DataSplits", "ImageFileDataset", "InMemoryLoader", "KNOWN_STATS",
    "StreamingLoader", "TensorImageDataset", "augment_batch", "cache_root", "check_source", "class_aliases", "class_names",
    "compute_mean_std",
    "cutout", "fetch_cifar", "imagenet_wnids", "load_data", "load_eval", "load_eval_image", "make_image_folder", "make_loader",
    "make_split_folder",
    "make_tensor_dataset", "map_folder_classes", "random_crop", "random_flip", "random_resized_crop",
    "read_cifar_folder", "safe_extract", "scan_image_folder", "stratified_split", "synthetic_images", "verify_md5",
]
