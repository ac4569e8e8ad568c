"""Data pipeline throughput, measured side by side with the usual per-image torchvision pipeline.

    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/bench_data.py [--device cuda] [--skip-real]

1. augment: images/s of ``make_loader`` over an in-memory CIFAR-sized uint8 tensor (batch 128:
   index, pad-crop, flip, cutout, normalise) against torchvision transforms.v2 applied per image in a
   DataLoader over the same tensor (the standard CIFAR recipe), and against a resnet20 training step
   (bf16 autocast, channels_last on CPU) for scale.
2. decode (real data, optional): decoding the 50k CIFAR-10 JPEGs into the tensor cache with a
   process pool vs one process, and the warm load from the disk cache.
3. stream (real data, optional): Imagenette 224 px through ``StreamingLoader`` (RandomResizedCrop +
   flip) vs torchvision ImageFolder + DataLoader with the same transforms, same worker count.
Numbers are medians of repeats; the machine may be shared, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from resnets.data import AugmentConfig, TensorImageDataset, load_data, make_loader
from resnets.data.cache import clear_memory_cache, decode_entries
from resnets.data.folder import scan_image_folder

CIFAR_FOLDER = Path("/work/shared/data/cifar10/train")
IMAGENETTE_FOLDER = Path("/work/shared/data/imagenette/train")
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def median_rate(run, count: int, repeats: int) -> float:
    run()  # warm up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_augment(device: torch.device, images_count: int, repeats: int) -> dict:
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (images_count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (images_count,), generator=generator)
    dataset = TensorImageDataset(images, labels, [str(i) for i in range(10)], MEAN, STD)
    results = {}
    configs = {
        "none": AugmentConfig(),
        "pad4-crop + flip (he2015)": AugmentConfig.preset("he2015"),
        "pad4-reflect-crop + flip + cutout8": AugmentConfig(crop_padding=4, flip=True, cutout_size=8),
        "reflect-pad-2 crop + alternating flip (airbench)": AugmentConfig.preset("airbench"),
        "random-resized-crop + flip": AugmentConfig.preset("imagenet"),
    }
    for name, config in configs.items():
        loader = make_loader(dataset, batch_size=128, augment=config, device=device)
        epoch = [0]

        def run():
            loader.set_epoch(epoch[0])
            epoch[0] += 1
            for batch, _ in loader:
                pass
            if device.type == "cuda":
                torch.cuda.synchronize()
        results[f"resnets make_loader: {name}"] = median_rate(run, len(loader) * 128, repeats)

    class PerImage(Dataset):
        def __init__(self):
            self.transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                                         v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

        def __len__(self):
            return images_count

        def __getitem__(self, index):
            return self.transform(images[index]), labels[index]

    for workers in (0, 2):
        per_image = DataLoader(PerImage(), batch_size=128, shuffle=True, drop_last=True, num_workers=workers,
                               persistent_workers=workers > 0)

        def run_peer():
            for batch, _ in per_image:
                batch = batch.to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
        results[f"torchvision v2 per image, DataLoader workers={workers}: pad4-crop + flip"] = median_rate(
            run_peer, len(per_image) * 128, max(1, repeats // 2))

    from resnets import create_model

    model = create_model("resnet20", num_classes=10).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch = torch.randn(128, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 10, (128,), device=device)

    def train_steps(steps=5):
        for _ in range(steps):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(batch), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    results["resnet20 training step (bf16, channels_last), for scale"] = median_rate(train_steps, 5 * 128, 3)
    return results


def bench_decode(workers: int, limit: int | None) -> dict:
    entries, _ = scan_image_folder(CIFAR_FOLDER)
    if limit:
        step = max(1, len(entries) // limit)
        entries = entries[::step][:limit]
    results = {"images": len(entries)}
    for label, count in ((f"process pool ({workers} workers)", workers), ("one process", 0)):
        start = time.perf_counter()
        images, _, skipped = decode_entries(entries, 32, workers=count)
        seconds = time.perf_counter() - start
        results[f"decode {len(entries)} JPEGs, {label}: s"] = round(seconds, 2)
        results[f"decode {len(entries)} JPEGs, {label}: img/s"] = round(len(entries) / seconds)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        load_data(CIFAR_FOLDER, val_split=0.1, cache_dir=cache, workers=workers)
        results["load_data cifar10 folder, cold (scan + decode + write cache): s"] = round(time.perf_counter() - start, 2)
        clear_memory_cache()
        start = time.perf_counter()
        load_data(CIFAR_FOLDER, val_split=0.1, cache_dir=cache)
        results["load_data cifar10 folder, warm disk cache (scan + read): s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        load_data(CIFAR_FOLDER, val_split=0.1, cache_dir=cache)
        results["load_data cifar10 folder, in memory (scan only): s"] = round(time.perf_counter() - start, 2)
    return results


def bench_stream(workers: int, images_count: int, repeats: int) -> dict:
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    with tempfile.TemporaryDirectory() as cache:
        splits = load_data(IMAGENETTE_FOLDER, val_split=0, cache_dir=cache, normalization="imagenet")
    chosen = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[:images_count]
    subset = splits.train.subset(chosen)
    ours = make_loader(subset, batch_size=64, augment=AugmentConfig.preset("imagenet"), workers=workers)
    epoch = [0]

    def run_ours():
        ours.set_epoch(epoch[0])
        epoch[0] += 1
        for batch, _ in ours:
            pass
    results = {f"resnets StreamingLoader (workers={workers})": median_rate(run_ours, len(ours) * 64, repeats)}
    transform = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.485, 0.456, 0.406),
                                                                                  (0.229, 0.224, 0.225))])
    folder = ImageFolder(str(IMAGENETTE_FOLDER), transform=transform)
    peer = DataLoader(Subset(folder, chosen.tolist()), batch_size=64, shuffle=True, drop_last=True,
                      num_workers=workers, persistent_workers=workers > 0)

    def run_peer():
        for batch, _ in peer:
            pass
    results[f"torchvision ImageFolder + DataLoader (workers={workers})"] = median_rate(run_peer, len(peer) * 64, repeats)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=10240, help="in-memory images per augment epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--decode-images", type=int, default=0, help="limit the decode benchmark (0: all 50k)")
    parser.add_argument("--stream-images", type=int, default=640)
    parser.add_argument("--skip-real", action="store_true", help="skip the benchmarks on /work/shared/data")
    parser.add_argument("--sections", default="augment,decode,stream", help="comma-separated subset to run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sections = set(args.sections.split(","))
    report = {"machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
                         f"device {device}"}
    if "augment" in sections:
        report["augment (img/s, batch 128, 32x32)"] = bench_augment(device, args.images, args.repeats)
    print(json.dumps(report, indent=2), flush=True)
    if "decode" in sections and not args.skip_real and CIFAR_FOLDER.is_dir():
        report["decode (CIFAR-10 JPEG folder)"] = bench_decode(args.workers, args.decode_images or None)
        print(json.dumps(report["decode (CIFAR-10 JPEG folder)"], indent=2), flush=True)
    if "stream" in sections and not args.skip_real and IMAGENETTE_FOLDER.is_dir():
        report["stream (img/s, Imagenette 224 px, batch 64)"] = bench_stream(min(args.workers, 2), args.stream_images,
                                                                             max(1, args.repeats // 2))
        print(json.dumps(report["stream (img/s, Imagenette 224 px, batch 64)"], indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
