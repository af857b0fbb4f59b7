"""Using a trained model: load it from a workdir or an export, predict, evaluate, export it.

    model = orca_jax.load_model("workdirs/run")        # or an export directory
    predictions = model.predict(x)                      # {"outputs", "probabilities", "classes", ...} by kind
    scores = model.evaluate(x, y)                       # the task's metric, computed as the run computed it
    export_model(model, "exported/")                    # self-contained: safetensors, HF-layout body, model card
"""

from orca_jax.inference.record import ModelError, TaskInfo, read_task_record, write_task_record
from orca_jax.inference.model import TrainedModel, load_model
from orca_jax.inference.export import export_model

__all__ = ["ModelError", "TaskInfo", "TrainedModel", "export_model", "load_model", "read_task_record",
           "write_task_record"]
