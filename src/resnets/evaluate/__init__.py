"""Evaluation: classification metrics and test-time augmentation (robustness and calibration live
in their own modules here and are imported directly, e.g. ``resnets.evaluate.calibration``); a checkpoint
with the preprocessing it was trained with comes from ``load_for_inference``.

    from resnets.evaluate import evaluate
    result = evaluate(model, loader, num_classes=10, classes=names, tta="flip")
"""

from .loading import LoadedModel, load_for_inference
from .metrics import EvalResult, EvalSums, autocast_context, evaluate, evaluate_with_plain, save_confusion_png
from .tta import TTA_MODES, tta_logits, tta_views

__all__ = ["EvalResult", "EvalSums", "LoadedModel", "TTA_MODES", "autocast_context", "evaluate", "evaluate_with_plain",
           "load_for_inference", "save_confusion_png", "tta_logits", "tta_views"]
