"""holomodal: multimodal classification with incomplete data."""

from holomodal.batch import Batch
from holomodal.errors import ConfigError, DataError, HolomodalError, RunFolderError, SchemaError
from holomodal.schema import Column, Modality, Schema, Task

__version__ = "0.1.0"


def __getattr__(name: str):
    # the estimator pulls in torch and Lightning: import it only when asked for
    if name == "Classifier":
        from holomodal.estimator import Classifier

        return Classifier
    raise AttributeError(name)


__all__ = [
    "Batch", "Classifier", "Column", "ConfigError", "DataError", "HolomodalError", "Modality",
    "RunFolderError", "Schema", "SchemaError", "Task",
]
