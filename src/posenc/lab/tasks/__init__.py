"""Lab tasks: one module per task (or per small family), each registering with ``@register_task("name")``.

Adding a task is adding one file here; it is imported on first use of the registry.
"""

from posenc.lab.tasks.base import IGNORE, Task, get_task, register_task, registered_tasks

__all__ = ["IGNORE", "Task", "get_task", "register_task", "registered_tasks"]
