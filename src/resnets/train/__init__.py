"""Training: recipes (YAML) resolved into a typed ``TrainConfig``, and one resumable ``Trainer``.

    from resnets.train import resolve_config, train, resume
    config = resolve_config("he2015-cifar", {"model": "resnet56", "data": "cifar10"})
    result = train(config, out_dir="runs/r56")        # -> RunResult
    result = resume("runs/r56")                        # continue after an interruption

``Trainer(config, out_dir, splits=, model=, loss_fn=, param_groups=, callbacks=, process=)`` is the
same loop with its extension points (see ``resnets.train.trainer``).
"""

from .checkpoint import load_training_checkpoint, save_training_checkpoint
from .config import ConfigError, TrainConfig, list_recipes, load_recipe, parse_set, resolve_config
from .optim import LRSchedule, ModelEMA, build_optimizer, param_groups
from .process import ProcessContext
from .trainer import Callback, NonFiniteLossError, RunResult, Trainer, resume, train

__all__ = [
    "Callback", "ConfigError", "LRSchedule", "ModelEMA", "NonFiniteLossError", "ProcessContext", "RunResult",
    "TrainConfig", "Trainer", "build_optimizer", "list_recipes", "load_recipe", "load_training_checkpoint",
    "param_groups", "parse_set", "resolve_config", "resume", "save_training_checkpoint", "train",
]
