"""Pretrained sources (ours, torchvision-format state dicts), the linear probe, the fine-tune loop
and the `resnets finetune` command, with their errors in words."""

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision

from resnets import CheckpointError, create_model, pretrained_config, save_weights
from resnets.cli import main
from resnets.data import make_image_folder, make_tensor_dataset
from resnets.transfer import (FinetuneConfig, LoopConfig, apply_finetune_policy, check_head, linear_probe,
                              load_source, run_finetune)
from resnets.weights import read_checkpoint


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


def batches_of(images, labels, size=16):
    x = (images.float() / 255 - 0.5) / 0.25
    return [(x[i:i + size], labels[i:i + size]) for i in range(0, len(x), size)]


def test_finetune_from_a_torchvision_format_state_dict(tmp_path):
    tv = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18-tv.pth"
    torch.save(tv.state_dict(), path)  # exactly what torchvision's hub files hold
    model, info = load_source(path, model_name="resnet18")
    assert info.num_classes == 1000
    x = torch.randn(2, 3, 64, 64)
    tv.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x))  # the same network, number for number
    groups = apply_finetune_policy(model, FinetuneConfig(num_classes=4, freeze="layer2", bn="eval", lr=0.05))
    assert model.fc.out_features == 4
    assert torch.equal(model.layer3[0].conv1.weight, tv.layer3[0].conv1.weight)
    model.train()
    loss = F.cross_entropy(model(x), torch.tensor([0, 3]))
    opt = torch.optim.SGD(groups, momentum=0.9)
    loss.backward()
    opt.step()
    assert torch.equal(model.layer2[0].conv1.weight, tv.layer2[0].conv1.weight)
    assert not torch.equal(model.layer3[0].conv1.weight, tv.layer3[0].conv1.weight)
    assert torch.equal(model.layer3[0].bn1.running_mean, tv.layer3[0].bn1.running_mean)


def test_finetune_from_a_timm_state_dict_in_memory():
    import timm  # a dev dependency
    theirs = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
    model, info = load_source(theirs.state_dict(), model_name="resnet18")
    assert info.num_classes == 7 and info.origin == "state dict"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), theirs(x))


def test_source_errors_in_words(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit resnet34.*3-4-6-3"):
        load_source(path, model_name="resnet34")
    with pytest.raises(CheckpointError, match="name its architecture"):
        load_source(path)
    with pytest.raises(CheckpointError, match="3 input channels but the data has 1.*adapt_in_chans"):
        load_source(path, model_name="resnet18", in_chans=1)
    adapted, _ = load_source(path, model_name="resnet18", in_chans=1, adapt_in_chans=True)
    assert adapted.conv1.weight.shape[1] == 1 and adapted.spec.in_chans == 1
    ours = tmp_path / "ours.safetensors"
    save_weights(create_model("resnet20"), ours, {"classes": [f"c{i}" for i in range(10)]})
    with pytest.raises(CheckpointError, match="not resnet56"):
        load_source(ours, model_name="resnet56")
    _, info = load_source(ours)
    with pytest.raises(CheckpointError, match="10-class head but the data has 5 classes"):
        check_head(info, 5, replace_head=False)
    with pytest.raises(CheckpointError, match="mislabel"):
        check_head(info, 10, replace_head=False, class_names=[f"d{i}" for i in range(10)])
    check_head(info, 5, replace_head=True)


def test_linear_probe_caches_features_and_yields_a_normal_checkpoint(tmp_path):
    images, labels = make_tensor_dataset(classes=3, per_class=12, size=16)
    data = batches_of(images, labels)
    model = create_model("resnet20", num_classes=10)
    result = linear_probe(model, data, 3, val_batches=data, cache_dir=tmp_path / "features", data_key="synthetic")
    assert not result.cache_hit and result.feature_dim == 64 and result.num_train == 36
    assert result.train_accuracy > 0.9  # synthetic classes are separable from random-feature stats
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in data])
    assert (logits.argmax(1) == labels).float().mean().item() == pytest.approx(result.val_accuracy)
    again = linear_probe(model, data, 3, cache_dir=tmp_path / "features", data_key="synthetic")
    assert again.cache_hit  # the new head does not change the features' key
    other = linear_probe(model, data, 3, cache_dir=tmp_path / "features", data_key="other data")
    assert not other.cache_hit  # a cache for other data is never reused
    path = save_weights(model, tmp_path / "probe.safetensors")
    ckpt = read_checkpoint(path)
    assert ckpt.spec.num_classes == 3 and "fc.weight" in ckpt.state_dict


def test_linear_probe_serves_the_fitted_logits_on_a_net_with_a_logit_scale():
    # the airbench nets scale their logits by 1/9 in forward_head: the probe's head must undo it, or the served
    # probabilities are far softer than the fitted ones (argmax alone cannot tell)
    from resnets.transfer.probe import extract_features, fit_linear

    images, labels = make_tensor_dataset(classes=3, per_class=8, size=16)
    data = batches_of(images, labels)
    model = create_model("resnet_airbench_narrow", num_classes=10)
    assert model.spec.logit_scale != 1.0
    linear_probe(model, data, 3)
    features, targets = extract_features(model, data)
    weight, bias = fit_linear(features, targets, 3)
    model.eval()
    with torch.no_grad():
        served = torch.cat([model(x) for x, _ in data])
    torch.testing.assert_close(served, features @ weight.T + bias, rtol=1e-4, atol=1e-4)


def test_finetune_loop_learns_and_writes_a_run(tmp_path):
    images, labels = make_tensor_dataset(classes=3, per_class=16, size=16)
    data = batches_of(images, labels)
    model = create_model("resnet20", num_classes=10)
    groups = apply_finetune_policy(model, FinetuneConfig(num_classes=3, lr=0.05, head_lr_mult=2.0))
    hist = run_finetune(model, groups, data, LoopConfig(epochs=4, warmup_epochs=0.5), val_batches=data,
                        out_dir=tmp_path / "run", metadata={"classes": ["a", "b", "c"]}, log=None)
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]
    assert hist.epochs[0]["lr"]["head"] == pytest.approx(2 * hist.epochs[0]["lr"]["layer1"])
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    reloaded, info = load_source(tmp_path / "run/best.safetensors")
    assert info.num_classes == 3 and info.class_names == ["a", "b", "c"]


def test_finetune_command_end_to_end(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=12, size=16)
    source = tmp_path / "source.safetensors"
    save_weights(create_model("resnet20", num_classes=10), source,
                 {"classes": [f"c{i}" for i in range(10)], "mean": [0.5] * 3, "std": [0.25] * 3})
    run = tmp_path / "run"
    code = main(["finetune", "--from", str(source), "--data", str(data), "--out", str(run), "--epochs", "2",
                 "--batch-size", "8", "--freeze", "layer1", "--bn", "eval", "--stage-lr", "layer2=0.1",
                 "--unfreeze-every", "1", "--val-split", "0.25"])
    assert code == 0
    assert {"finetune.yaml", "config.yaml", "metrics.jsonl", "best.safetensors", "last.pt", "summary.json"} <= {
        p.name for p in run.iterdir()}
    best = read_checkpoint(run / "best.safetensors")
    assert best.spec.num_classes == 3 and best.metadata["classes"] == ["class_0", "class_1", "class_2"]
    assert best.metadata["model_name"] == "resnet20" and best.metadata["recipe"] == "finetune"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["train_loss"] > 0 for r in rows)
    source_sd = read_checkpoint(source).state_dict
    assert torch.equal(best.state_dict["layer1.0.conv1.weight"], source_sd["layer1.0.conv1.weight"])  # frozen
    probe = tmp_path / "probe"
    assert main(["finetune", "--from", str(source), "--data", str(data), "--out", str(probe), "--linear-probe",
                 "--val-split", "0.25"]) == 0
    summary = json.loads((probe / "summary.json").read_text())
    assert summary["val_acc"] == pytest.approx(summary["val_acc_from_images"])
    capsys.readouterr()
    # the probe's checkpoint says what it trained on: eval refuses those images, and --held-out redraws its split
    assert main(["eval", "--checkpoint", str(probe / "best.safetensors"), "--data", str(data)]) == 2
    assert "holds the images" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(probe / "best.safetensors"), "--data", str(data), "--held-out",
                 "--workers", "0"]) == 0
    assert "(9 images" in capsys.readouterr().out
    assert main(["finetune", "--from", str(source), "--data", str(data), "--out", str(tmp_path / "x"),
                 "--freeze", "layer4"]) == 2
    assert "no such stage" in capsys.readouterr().err
    assert main(["finetune", "--from", str(source), "--data", str(data), "--out", str(tmp_path / "y"),
                 "--keep-head"]) == 2
    assert "10-class head but the data has 3 classes" in capsys.readouterr().err
    for flag in (["--keep-head"], ["--unfreeze-every", "1"]):  # a probe ignored them silently
        assert main(["finetune", "--from", str(source), "--data", str(data), "--out", str(tmp_path / "z"),
                     "--linear-probe", *flag]) == 2
        assert f"{flag[0]} and --linear-probe contradict" in capsys.readouterr().err
        assert not (tmp_path / "z").exists()
    for flag in (["--lr", "0.5"], ["--freeze", "layer1"], ["--stage-lr", "layer9=0.1"], ["--epochs", "3"]):
        assert main(["finetune", "--from", str(source), "--data", str(data), "--out", str(tmp_path / "z"),
                     "--linear-probe", *flag]) == 2
        assert f"{flag[0]} sets how fine-tuning trains, and --linear-probe trains nothing" in capsys.readouterr().err
    assert main(["finetune", "--from", str(source), "--data", str(data), "--out", str(tmp_path / "z"),
                 "--probe-weight-decay", "0.1"]) == 2
    assert "add --linear-probe" in capsys.readouterr().err and not (tmp_path / "z").exists()


def test_safetensors_whose_header_length_looks_like_a_pickle_keeps_its_spec(tmp_path):
    # Regression: a header length with low byte 0x80 (a pickle's first byte) was read as a .pt file
    # and lost its spec, so a fine-tuned run's best.safetensors could not be reloaded.
    model = create_model("resnet20", num_classes=3)
    for pad in range(300):
        path = save_weights(model, tmp_path / f"m{pad}.safetensors", {"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    assert read_checkpoint(path).spec.num_classes == 3


def test_linear_probe_cache_is_never_reused_for_other_data_pooling_or_precision(tmp_path):
    # Regression: with the default data_key="" a cache written for one data set was reused for another (its
    # features and labels), and a model whose pooling changed (same weights) reused the other pooling's features.
    model = create_model("resnet20", num_classes=3, layers=(1, 1, 1))
    first = [(torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2]))]
    with pytest.raises(ValueError, match="needs data_key"):
        linear_probe(model, first, 3, cache_dir=tmp_path / "f")
    assert not linear_probe(model, first, 3, cache_dir=tmp_path / "f", data_key="d").cache_hit
    assert linear_probe(model, first, 3, cache_dir=tmp_path / "f", data_key="d").cache_hit
    model.reset_classifier(3, global_pool="max")  # other features from the same weights
    assert not linear_probe(model, first, 3, cache_dir=tmp_path / "f", data_key="d").cache_hit
    assert not linear_probe(model, first, 3, cache_dir=tmp_path / "f", data_key="d", amp=True).cache_hit


def test_source_by_published_name_needs_no_model_and_a_missing_file_stays_a_missing_file(tmp_path, monkeypatch,
                                                                                        capsys):
    from PIL import Image

    from resnets import weights as weights_module

    published = torchvision.models.resnet18().state_dict()  # stands in for torchvision's download
    monkeypatch.setattr(weights_module, "torchvision_state_dict", lambda name, tag: published)
    model, info = load_source("resnet18.IMAGENET1K_V1")
    assert info.num_classes == 1000 and info.class_names[0] == "tench"  # the published head and its names
    assert torch.equal(model.fc.weight, published["fc.weight"])
    with pytest.raises(CheckpointError, match="not resnet34"):
        load_source("resnet18.IMAGENET1K_V1", model_name="resnet34")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):  # not torchvision's tag "PT"
        load_source("resnet18.pt", model_name="resnet18")

    # every --checkpoint command reads the name: predict with the published preprocessing and category names
    Image.fromarray(torch.randint(0, 256, (240, 320, 3), dtype=torch.uint8).numpy()).save(tmp_path / "photo.png")
    assert main(["predict", "--checkpoint", "resnet18.IMAGENET1K_V1", "photo.png", "--json", "--top-k", "2"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert len(top) == 2 and {t["class"] for t in top} <= set(info.class_names)


def test_published_imagenet_weights_evaluate_on_a_tree_of_wordnet_id_folders(tmp_path, monkeypatch, capsys):
    """ILSVRC2012 and Imagenette name class folders by WordNet id; published weights name outputs by category."""
    from resnets import weights as weights_module
    from resnets.data import imagenet_wnids, map_folder_classes

    categories = pretrained_config("resnet18", "IMAGENET1K_V1")["classes"]
    assert len(imagenet_wnids()) == 1000 and imagenet_wnids()[:2] == ("n01440764", "n01443537")
    root = make_image_folder(tmp_path / "val", classes=2, per_class=2, size=40, names=["n01440764", "n02102040"])
    assert map_folder_classes(categories, root) == {"n01440764": 0, "n02102040": 217}  # tench, English springer
    with pytest.raises(Exception, match="or their WordNet ids"):
        map_folder_classes(categories, make_image_folder(tmp_path / "odd", classes=1, per_class=1, names=["n0"]))
    with pytest.raises(Exception, match="not trained on: n01440764"):  # ids only stand for ImageNet's own names
        map_folder_classes(["a", "b"], root)

    published = torchvision.models.resnet18().state_dict()  # stands in for torchvision's download
    monkeypatch.setattr(weights_module, "torchvision_state_dict", lambda name, tag: published)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", "resnet18.IMAGENET1K_V1", "--data", str(root), "--workers", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert json.loads(printed[-1])["count"] == 4  # (no --json: a 1,000-class confusion figure takes seconds)
    assert "tench" in printed[-2] and "English springer" in printed[-2]  # the lowest per-class accuracies
