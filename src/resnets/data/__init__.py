"""Data for training and evaluation: sources (CIFAR archives, image folders), an on-disk uint8
tensor cache, batch augmentation on the training device, and deterministic resumable loaders.
"""

from .synthetic import class_names, make_image_folder, make_split_folder, make_tensor_dataset, synthetic_images
