"""Compress and deploy: BN folding and inference rewrites, int8 quantization, structured pruning,
knowledge distillation, verified export (ONNX, torch.export) and the inference benchmark."""

from .distill import DistillationLoss, distillation_kl, distillation_loss
from ..precision import native_bf16 as bf16_supported
from .fuse import InferenceModel, fold_batchnorm, make_inference_model, optimize_for_inference
from .prune import PruneResult, PruningError, prune_model
from .quantize import CalibrationError, QuantizedModel, load_quantized, quantize_int8, save_quantized

__all__ = [
    "CalibrationError", "DistillationLoss", "InferenceModel", "PruneResult", "PruningError", "QuantizedModel",
    "bf16_supported", "distillation_kl", "distillation_loss", "fold_batchnorm", "load_quantized",
    "make_inference_model", "optimize_for_inference", "prune_model", "quantize_int8", "save_quantized",
]
