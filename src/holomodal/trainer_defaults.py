"""The trainer settings a run starts from, apart from :mod:`holomodal.training` so that code
which only needs the defaults (rebuilding a saved model to predict) does not import Lightning."""

from __future__ import annotations

DEFAULT_TRAINER = {
    "max_epochs": 10, "accelerator": "auto", "devices": "auto", "strategy": "auto", "num_nodes": 1,
    "precision": "auto", "gradient_clip_val": None, "deterministic": False, "log_every_n_steps": 10,
    "limit_train_batches": None, "enable_progress_bar": True,
}
KNOWN_LOGGERS = ("csv", "tensorboard", "mlflow")
# a trainer option holomodal turns into a callback rather than passing to lightning.Trainer
EARLY_STOPPING = "early_stopping"
