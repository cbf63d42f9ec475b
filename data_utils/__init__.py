"""Data utilities: task definitions (YAML -> TaskDef), canonical-TSV and shard readers, metrics.

Only the light task-definition API is re-exported here, so ``import data_utils`` stays free of torch/sklearn.
"""
from data_utils.task_def import DataFormat, TaskDef, TaskDefError, TaskType, load_task_defs

__all__ = ["DataFormat", "TaskDef", "TaskDefError", "TaskType", "load_task_defs"]
