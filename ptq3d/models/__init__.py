"""Models: VGGT and Pi3 in our own code, checkpoint loading, the registry and the GeometryModel adapters."""

from ptq3d.models.base import BlockContext, BlockInfo, GeometryModel, Predictions
from ptq3d.models.loading import LoadReport, read_state_dict
from ptq3d.models.registry import list_models, load_model, model_names, register_model

__all__ = [
    "BlockContext",
    "BlockInfo",
    "GeometryModel",
    "LoadReport",
    "Predictions",
    "list_models",
    "load_model",
    "model_names",
    "read_state_dict",
    "register_model",
]
