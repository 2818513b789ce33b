"""Lab tasks: one module per task (or per small family), each registering with ``@register_task("name")``.

Adding a task is adding one file here; it is imported on first use of the registry. ``posenc lab list`` reads the
tasks' metadata from a generated catalog instead, to skip importing torch: ``make readme`` refreshes it
(:mod:`posenc.lab.catalog`). Until then a test fails, and a task file the catalog does not know makes the list
import the tasks, so it is slow but complete.
"""

from posenc.lab.tasks.base import IGNORE, Task, get_task, register_task, registered_tasks

__all__ = ["IGNORE", "Task", "get_task", "register_task", "registered_tasks"]
