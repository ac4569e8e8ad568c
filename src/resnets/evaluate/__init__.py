"""Evaluation: classification metrics and test-time augmentation (robustness and calibration live
in their own modules here and are imported directly, e.g. ``resnets.evaluate.calibration``); a checkpoint
with the preprocessing it was trained with comes from ``load_for_inference``.

    from resnets.evaluate import evaluate
    result = evaluate(model, loader, num_classes=10, classes=names, tta="flip")   # result.top1_interval: 95%

Two models on the same images: ``compare_hits`` (``resnets eval --compare``), from the ``hits`` ``evaluate`` collects.
"""

from .compare import PairedComparison, compare_hits
from .loading import LoadedModel, load_for_inference
from .metrics import (EvalResult, EvalSums, OnlyClasses, autocast_context, evaluate, evaluate_with_plain,
                      save_confusion_png, wilson_interval)
from .tta import TTA_MODES, tta_logits, tta_views

__all__ = ["EvalResult", "EvalSums", "LoadedModel", "OnlyClasses", "PairedComparison", "TTA_MODES", "autocast_context", "compare_hits",
           "evaluate", "evaluate_with_plain", "load_for_inference", "save_confusion_png", "tta_logits", "tta_views",
           "wilson_interval"]
