"""The lab: train tiny Transformers on tasks that isolate what positions do, sweep encodings, and report.

- :mod:`posenc.lab.tasks` — one file per task, each a :class:`~posenc.lab.tasks.Task` with
  ``sample_batch(generator, batch_size, length) -> dict``.
- :mod:`posenc.lab.config` — dataclasses for model, task and run; presets per suite.
- :mod:`posenc.lab.train` — one training run (AdamW, warmup + cosine, evaluation at and beyond the training length,
  atomic checkpoints, DistributedDataParallel under ``torchrun``); its loop, ``train_steps``, is the one the demo and
  the context-extension fine-tune use too.
- :mod:`posenc.lab.flags` — command-line flags generated from the config dataclasses (``posenc lab run``, ``python -m
  posenc.lab.train``).
- :mod:`posenc.lab.sweep` — tasks x encodings x seeds, one JSON record per finished run, resumable after SIGKILL.
- :mod:`posenc.lab.report` — ``report.md``, ``report.html`` and PNG plots, built from the records alone.
- :mod:`posenc.lab.markdown` — the report's Markdown (data escaped) and its HTML, rendered by markdown-it-py.
- :mod:`posenc.lab.extension` — context extension: a ``rope`` LM at L, evaluated at 4L with each RoPE scaling.
- :mod:`posenc.lab.reference` — the published numbers the report puts beside ours.

Command line: ``posenc lab run --suite quick --out runs/quick``, ``posenc lab report runs/quick``, ``posenc lab list``,
``posenc lab extend --out runs/extend``.
"""
