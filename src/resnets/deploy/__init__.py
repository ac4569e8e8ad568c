"""Compress and deploy: BN folding and inference rewrites, int8 quantization, structured pruning,
knowledge distillation, verified export (ONNX, torch.export) and the inference benchmark."""

from ..precision import native_bf16 as bf16_supported
from .bench import benchmark, compare_architectures
from .distill import DistillationLoss, distillation_kl, distillation_loss
from .export import ExportError, ExportReport, export_model, export_onnx, export_program
from .fuse import InferenceModel, fold_batchnorm, make_inference_model, optimize_for_inference
from .openvino import compile_openvino, export_openvino
from .prune import PruneResult, PruningError, prune_model
from .quantize import (CalibrationError, QuantizedModel, load_quantized, quantization_aware_finetune, quantize_int8,
                       save_quantized)

__all__ = [
    "CalibrationError", "DistillationLoss", "ExportError", "ExportReport", "InferenceModel", "PruneResult",
    "PruningError", "QuantizedModel", "benchmark", "bf16_supported", "compare_architectures", "compile_openvino",
    "distillation_kl", "distillation_loss", "export_model", "export_onnx", "export_openvino", "export_program",
    "fold_batchnorm", "load_quantized", "make_inference_model", "optimize_for_inference", "prune_model",
    "quantization_aware_finetune", "quantize_int8", "save_quantized",
]
