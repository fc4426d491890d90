"""Data: GLUE tasks and the users' own files → splits → tokenised batches.

``tasks`` describes each task, ``sources`` reads examples, ``splits`` carves train / validation / test,
``batches`` tokenises and pads. Importing this package does not import torch or transformers.
"""

from zoft.data.sources import Examples, read_files, read_glue_folder, read_glue_hub
from zoft.data.splits import TaskData, holdout, k_shot, limit, load_task_data
from zoft.data.tasks import TASKS, TaskSpec, get_task

__all__ = [
    "TASKS",
    "Examples",
    "TaskData",
    "TaskSpec",
    "get_task",
    "holdout",
    "k_shot",
    "limit",
    "load_task_data",
    "read_files",
    "read_glue_folder",
    "read_glue_hub",
]
