"""``resnets.detection``: FPN backbones on resnets models and torchvision's Faster/Mask R-CNN on them.

The code lives in ``resnets.transfer.detection``; this module is the short public name.
"""

from .transfer.detection import NORMS, ResNetFPN, faster_rcnn, fpn_backbone, mask_rcnn

__all__ = ["NORMS", "ResNetFPN", "faster_rcnn", "fpn_backbone", "mask_rcnn"]
