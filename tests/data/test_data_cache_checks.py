import torch
from safetensors.torch import save_file

from resnets.data import load_data, make_image_folder
from resnets.data import cache as cache_module


def test_a_cache_file_that_does_not_fit_the_file_list_is_rebuilt(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=3, size=8)
    first = load_data(root, val_split=0, cache_dir=tmp_path / "cache")
    (path,) = (tmp_path / "cache" / "tensors").glob("*.safetensors")
    for images, labels in [(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)),
                           (torch.zeros(6, 3, 4, 4, dtype=torch.uint8), torch.zeros(6, dtype=torch.int64)),
                           (torch.zeros(6, 3, 8, 8, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64))]:
        save_file({"images": images, "labels": labels}, str(path), {"skipped": "[]"})
        cache_module.clear_memory_cache()
        again = load_data(root, val_split=0, cache_dir=tmp_path / "cache")
        assert torch.equal(again.train.images, first.train.images)
        assert torch.equal(again.train.labels, first.train.labels)
