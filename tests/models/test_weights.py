"""Checkpoint IO: formats, safety, adaptation, and mismatch messages in words."""

import json
import os
import pickle

import pytest
import torch
import torchvision

import resnets
from resnets import CheckpointError
from resnets.weights import adapt_input_conv, atomic_write, read_checkpoint


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_and_load_round_trip_keeps_spec_and_metadata(tmp_path, suffix):
    model = resnets.create_model("resnet20", num_classes=4).eval()
    path = resnets.save_weights(model, tmp_path / f"m{suffix}", metadata={"classes": ["a", "b", "c", "d"]})
    ckpt = read_checkpoint(path)
    assert ckpt.spec == model.spec and ckpt.metadata["classes"] == ["a", "b", "c", "d"]
    rebuilt, _ = resnets.model_from_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model(x), rtol=0, atol=0)
    other = resnets.create_model("resnet20", num_classes=4, weights=path).eval()
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_plain_torchvision_file_loads_by_name(tmp_path):
    peer = torchvision.models.resnet18()
    torch.save(peer.state_dict(), tmp_path / "tv.pth")
    ours = resnets.create_model("resnet18", weights=tmp_path / "tv.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), peer.eval()(x))


def test_files_without_bn_step_counters_and_reference_script_checkpoints_load_the_raw_weights(tmp_path):
    # pre-0.4.1 torchvision files and FrozenBatchNorm backbones lack num_batches_tracked (torch fills it in);
    # torchvision's train.py saves "model" beside an AveragedModel "model_ema", whose counter is no weight
    peer = torchvision.models.resnet18().eval()
    state = {k: v for k, v in peer.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    x = torch.randn(1, 3, 64, 64)
    ours = resnets.create_model("resnet18", weights=tmp_path / "old.pth").eval()
    torch.testing.assert_close(ours(x), peer(x), rtol=0, atol=0)
    ema = torch.optim.swa_utils.AveragedModel(torchvision.models.resnet18())
    torch.save({"model": peer.state_dict(), "model_ema": ema.state_dict(), "epoch": 3}, tmp_path / "ref.pth")
    raw = resnets.create_model("resnet18", weights=tmp_path / "ref.pth").eval()
    torch.testing.assert_close(raw(x), peer(x), rtol=0, atol=0)
    torch.save({"model_ema": ema.state_dict()}, tmp_path / "ema_only.pth")
    averaged = resnets.create_model("resnet18", weights=tmp_path / "ema_only.pth").eval()
    torch.testing.assert_close(averaged(x), ema.module.eval()(x), rtol=0, atol=0)


def test_checkpoint_of_another_architecture_is_explained(tmp_path):
    path = resnets.save_weights(resnets.create_model("resnet50"), tmp_path / "r50.safetensors")
    with pytest.raises(CheckpointError) as info:
        resnets.create_model("resnet18", weights=path)
    message = str(info.value)
    assert "bottleneck" in message and "3-4-6-3" in message and "2-2-2-2" in message
    assert "missing" not in message.lower() or "model tensors" in message


def test_class_count_mismatch_needs_adapt(tmp_path):
    path = resnets.save_weights(resnets.create_model("resnet20", num_classes=10), tmp_path / "c10.safetensors")
    model = resnets.create_model("resnet20", num_classes=5)
    with pytest.raises(CheckpointError, match="10 classes, model 5"):
        resnets.load_weights(model, path)
    resnets.load_weights(model, path, adapt=True)  # head dropped, body loaded
    assert model.fc.out_features == 5


def test_in_chans_adaptation_sums_or_repeats_filters(tmp_path):
    src = resnets.create_model("resnet18")
    path = resnets.save_weights(src, tmp_path / "rgb.safetensors")
    gray = resnets.create_model("resnet18", in_chans=1, weights=path)
    torch.testing.assert_close(gray.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    assert adapt_input_conv(src.conv1.weight, 5).shape[1] == 5
    six = adapt_input_conv(src.conv1.weight, 6)
    # repeated RGB filters, rescaled: a constant image gives the same first-layer response
    torch.testing.assert_close(six.sum(1), src.conv1.weight.sum(1))
    with pytest.raises(CheckpointError, match="input channels"):
        resnets.load_weights(resnets.create_model("resnet18", in_chans=1), path)


def test_truncated_and_foreign_files_are_rejected_clearly(tmp_path):
    good = resnets.save_weights(resnets.create_model("resnet20"), tmp_path / "m.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        read_checkpoint(cut)
    pt = resnets.save_weights(resnets.create_model("resnet20"), tmp_path / "m.pt")
    cut_pt = tmp_path / "cut.pt"
    cut_pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        read_checkpoint(cut_pt)
    text = tmp_path / "notes.pt"
    text.write_text("hello, I am not a checkpoint")
    with pytest.raises(CheckpointError, match="neither a safetensors file nor a PyTorch checkpoint"):
        read_checkpoint(text)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        read_checkpoint(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/resnets_pwned",))


def test_pickled_code_is_never_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        read_checkpoint(path)
    assert not os.path.exists("/tmp/resnets_pwned")
    raw = tmp_path / "evil_raw.pt"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        read_checkpoint(raw)
    assert not os.path.exists("/tmp/resnets_pwned")


def test_atomic_write_leaves_old_file_when_the_writer_crashes(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")

    def crash(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_atomic_write_gives_the_mode_of_a_plain_write_or_keeps_the_replaced_files(tmp_path):
    """mkstemp's private 0600 must not leak into checkpoints a team shares."""
    old_mask = os.umask(0o027)
    try:
        fresh = atomic_write(tmp_path / "fresh.bin", lambda tmp: open(tmp, "wb").write(b"new"))
        assert fresh.stat().st_mode & 0o777 == 0o640
        kept = tmp_path / "kept.bin"
        kept.write_bytes(b"old")
        kept.chmod(0o604)
        atomic_write(kept, lambda tmp: open(tmp, "wb").write(b"new"))
        assert kept.stat().st_mode & 0o777 == 0o604 and kept.read_bytes() == b"new"
    finally:
        os.umask(old_mask)


def test_atomic_write_names_its_temporary_file_like_the_target(tmp_path):
    """Some writers (torch.export's .pt2 archive) check the extension of the path they are given."""
    seen = []
    atomic_write(tmp_path / "model.pt2", lambda tmp: (seen.append(tmp), open(tmp, "wb").write(b"x")))
    assert seen[0].endswith(".pt2") and (tmp_path / "model.pt2").read_bytes() == b"x"


def test_unknown_torchvision_tag_lists_available():
    with pytest.raises(CheckpointError, match="IMAGENET1K_V1"):
        resnets.create_model("resnet50", weights="IMAGENET9K_V7")
    with pytest.raises(CheckpointError, match="no weights"):
        resnets.create_model("resnet20", weights="DEFAULT")


def test_offline_weight_tag_says_how_to_pass_a_downloaded_file(monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(self, *args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(CheckpointError, match=r"could not download ResNet18_Weights.IMAGENET1K_V1 from https://.*"
                                              r"\(Name or service not known\).*weights=PATH in Python; "
                                              r"`resnets finetune --from PATH --model NAME`"):
        resnets.create_model("resnet18", weights="IMAGENET1K_V1")


def test_pretrained_config_states_torchvision_preprocessing_and_categories():
    v1, v2 = resnets.pretrained_config("resnet50", "IMAGENET1K_V1"), resnets.pretrained_config("resnet50", "DEFAULT")
    assert len(v2["classes"]) == 1000 and v2["classes"][0] == "tench"
    assert (v1["image_size"], round(v1["image_size"] / v1["crop_fraction"])) == (224, 256)
    assert (v2["image_size"], round(v2["image_size"] / v2["crop_fraction"])) == (224, 232)  # V2 evaluates at 232
    assert v2["mean"] == pytest.approx([0.485, 0.456, 0.406]) and v2["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert v2["source"].endswith("IMAGENET1K_V2") and v2["published_top1"] == pytest.approx(80.858)
    with pytest.raises(CheckpointError, match="no weights"):
        resnets.pretrained_config("resnet20")


def test_published_weights_carry_their_config_into_a_checkpoint_predict_uses(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from resnets import weights as weights_module
    from resnets.cli import main
    from resnets.data import load_eval_image

    published = torchvision.models.resnet18().state_dict()  # stands in for the download
    monkeypatch.setattr(weights_module, "torchvision_state_dict", lambda name, tag: published)
    model = resnets.create_model("resnet18", weights="IMAGENET1K_V1")
    assert model.pretrained_cfg["source"].endswith("ResNet18_Weights.IMAGENET1K_V1")
    assert "classes" not in resnets.create_model("resnet18", weights="IMAGENET1K_V1", num_classes=5).pretrained_cfg

    path = resnets.save_weights(model, tmp_path / "r18.safetensors", metadata=model.pretrained_cfg)
    image = tmp_path / "wide.png"
    Image.fromarray(torch.randint(0, 256, (300, 400, 3), dtype=torch.uint8).numpy()).save(image)
    assert main(["predict", "--checkpoint", str(path), str(image), "--json", "--top-k", "3"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert len(top) == 3 and all(t["class"] in model.pretrained_cfg["classes"] for t in top)

    # a class list that does not fit the head is refused, and a new head drops the published names
    wrong = resnets.save_weights(model, tmp_path / "wrong.safetensors", metadata={"classes": ["a", "b"]})
    assert main(["predict", "--checkpoint", str(wrong), str(image)]) == 2
    assert "names 2 classes but its model has 1000 outputs" in capsys.readouterr().err
    model.reset_classifier(4)
    assert "classes" not in model.pretrained_cfg and model.pretrained_cfg["image_size"] == 224

    # the stored crop fraction decides the resize before the centre crop (256 vs 232 for a 224 crop)
    from torchvision.transforms import v2
    pil = Image.open(image).convert("RGB")
    for fraction, shorter in ((224 / 256, 256), (224 / 232, 232)):
        expected = v2.Compose([v2.Resize(shorter, antialias=True), v2.CenterCrop(224), v2.PILToTensor()])(pil)
        assert torch.equal(load_eval_image(image, 224, fraction), expected)
    with pytest.raises(ValueError, match="crop_fraction"):
        load_eval_image(image, 224, 1.5)


def test_int8_files_from_resnets_quantize_are_named_not_called_dicts_without_weights(tmp_path):
    """``resnets quantize`` files hold packed int8 modules (not plain tensors) under 'state_dict'; the reader names
    the format and the way to load it instead of reporting a dict without a state dict."""
    from resnets.deploy.quantize import QUANT_FORMAT

    path = tmp_path / "m.int8.pt"
    torch.save({"format": QUANT_FORMAT, "spec": {}, "state_dict": {"fc._packed_params.dtype": torch.qint8,
                                                                   "fc.scale": torch.tensor(0.1)}}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "int8 model written by `resnets quantize`" in message and "resnets.deploy.load_quantized" in message
    assert "without a state dict" not in message


def test_published_weights_are_listed_and_load_by_tagged_name(monkeypatch, capsys):
    """timm's discovery: list_models(pretrained=True) and list_pretrained() give names create_model takes."""
    from resnets import weights as weights_module
    from resnets.cli import main

    with_weights = resnets.list_models(pretrained=True)
    assert {"resnet18", "resnet50", "resnext101_64x4d", "wide_resnet101_2", "r3d_18"} <= set(with_weights)
    assert not {"resnet20", "resnet50d", "preact_resnet18"} & set(with_weights)
    assert resnets.list_pretrained("resnet50") == ["resnet50.IMAGENET1K_V1", "resnet50.IMAGENET1K_V2"]
    assert resnets.list_pretrained("*V2") == [n for n in resnets.list_pretrained() if n.endswith("V2")] != []
    assert resnets.list_pretrained("resnet20") == [] and resnets.pretrained_tags("resnet20") == []

    asked = []
    published = torchvision.models.resnet50().state_dict()  # stands in for the download
    monkeypatch.setattr(weights_module, "torchvision_state_dict", lambda name, tag: asked.append((name, tag)) or published)
    model = resnets.create_model("resnet50.imagenet1k_v2")  # timm's tags are lower case; torchvision's upper
    assert asked == [("resnet50", "IMAGENET1K_V2")] and model.pretrained_cfg["source"].endswith("IMAGENET1K_V2")
    assert torch.equal(model.fc.weight, published["fc.weight"])
    resnets.create_model("resnet50", weights="imagenet1k_v1")  # weights= reads a tag in any case too
    assert asked[-1] == ("resnet50", "IMAGENET1K_V1")
    resnets.create_model("resnet50", pretrained=True)  # timm's keyword: torchvision's recommended weights
    assert asked[-1] == ("resnet50", "DEFAULT")
    with pytest.raises(ValueError, match="names weights twice"):
        resnets.create_model("resnet50", pretrained=True, weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="names two sets of weights"):
        resnets.create_model("resnet50.IMAGENET1K_V2", weights="IMAGENET1K_V1")
    with pytest.raises(CheckpointError, match="available: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2"):
        resnets.create_model("resnet50.IMAGENET9K_V7")
    with pytest.raises(resnets.UnknownModelError, match="'IMAGENET1K_V2' names weights, not a model"):
        resnets.get_spec("resnet50.IMAGENET1K_V2")
    with pytest.raises(resnets.UnknownModelError, match="ends in a dot"):
        resnets.create_model("resnet50.")

    assert main(["models", "resnet5*", "--pretrained", "--no-macs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "weights" and len(lines) == 2 and lines[1].endswith("IMAGENET1K_V1, IMAGENET1K_V2")
    assert main(["models", "resnet2*", "--pretrained"]) == 2
    assert "no model with published weights matches 'resnet2*'" in capsys.readouterr().err
    assert main(["models", "resnet20", "--json", "--no-macs"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["weights"] == []


def test_a_tampered_download_cache_is_refused_without_running_its_code(tmp_path, monkeypatch):
    """torch.hub unpickles cached weights with weights_only=False by default; ours must not."""
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)
    cached.parent.mkdir(parents=True)
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    cached.write_bytes(pickle.dumps({"fc.weight": Payload()}))
    with pytest.raises(CheckpointError, match=r"refused to load .*holds more than tensors.*delete it"):
        resnets.create_model("resnet18", weights="IMAGENET1K_V1")
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_checkpoint_with_non_finite_weights_is_refused_by_name(tmp_path, suffix, capsys):
    # predict printed "nan", eval scored chance as a result, and quantize/calibrate failed deep inside torch
    model = resnets.create_model("resnet20", layers=(1, 1, 1), num_classes=3)
    with torch.no_grad():
        model.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")
        model.bn1.running_var[1] = float("inf")
    path = resnets.save_weights(model, tmp_path / f"diverged{suffix}", {"classes": ["a", "b", "c"]})
    with pytest.raises(CheckpointError, match="non-finite weights .* in 2 tensor\\(s\\), e.g. bn1.running_var"):
        resnets.model_from_checkpoint(path)
    from PIL import Image

    from resnets.cli import main

    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    assert main(["predict", "--checkpoint", str(path), str(image)]) == 2
    assert "the training that wrote it diverged" in capsys.readouterr().err


def test_missing_files_and_unknown_weight_tags_are_told_apart(tmp_path):
    with pytest.raises(CheckpointError, match="resnet18's published weights are resnet18.DEFAULT, "
                                              "resnet18.IMAGENET1K_V1"):
        read_checkpoint("resnet18.BOGUS")
    with pytest.raises(CheckpointError, match="torchvision publishes none for resnet20"):
        read_checkpoint("resnet20.imagenet1k_v1")
    with pytest.raises(CheckpointError, match="'resnet18.pt' does not exist; check the path"):
        read_checkpoint("resnet18.pt")
    from resnets.evaluate.loading import load_for_inference

    path = resnets.save_weights(resnets.create_model("resnet20", layers=(1, 1, 1), num_classes=2),
                                tmp_path / "m.safetensors", {"classes": "cat,dog"})
    with pytest.raises(CheckpointError, match="stores 'classes' as 'cat,dog', not a list of class names"):
        load_for_inference(path)


def test_atomic_write_clears_what_a_killed_writer_left_but_not_a_write_in_progress(tmp_path):
    # a SIGKILL mid-save (a checkpoint, the image cache) left its temporary file for good
    import time

    old = tmp_path / ".last.pt.abc123.tmp.pt"
    young = tmp_path / ".last.pt.def456.tmp.pt"
    other = tmp_path / ".best.safetensors.ghi789.tmp.safetensors"
    for leftover in (old, young, other):
        leftover.write_bytes(b"torn")
    two_hours_ago = time.time() - 7200
    for leftover in (old, other):
        os.utime(leftover, (two_hours_ago, two_hours_ago))
    atomic_write(tmp_path / "last.pt", lambda tmp: open(tmp, "wb").write(b"new"))
    assert (tmp_path / "last.pt").read_bytes() == b"new"
    assert not old.exists() and young.exists() and other.exists()  # only this target's, and only stale ones
