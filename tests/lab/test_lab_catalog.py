"""`posenc lab list` reads a generated catalog instead of importing torch; the catalog equals the live registries."""


from posenc.base import registered_names
from posenc.lab import _catalog, catalog
from posenc.lab.tasks.base import registered_tasks, task_class


def test_lab_list_does_not_import_torch(fresh_python):
    out = fresh_python(
        "import contextlib, io, sys\n"
        "from posenc.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    assert main(['lab', 'list']) == 0\n"
        "assert '  parity_check ' in buf.getvalue() and '  standard ' in buf.getvalue(), buf.getvalue()\n"
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n"
    )
    assert out.strip() == "[]"


def test_catalog_is_current():
    assert catalog.CATALOG.read_text(encoding="utf-8") == catalog.render_catalog(catalog.build_catalog()), \
        "run `python -m posenc.lab.catalog --write` (or `make readme`)"


def test_catalog_lists_what_the_registries_hold(fresh_python):
    # read the catalog in a process that has not loaded the registries, and compare with them here
    out = fresh_python(
        "import json\n"
        "from dataclasses import asdict\n"
        "from posenc.lab.catalog import encoding_names, task_infos\n"
        "print(json.dumps({'tasks': [asdict(t) for t in task_infos()], 'encodings': encoding_names()}))\n"
    )
    import json

    listed = json.loads(out)
    assert listed["encodings"] == registered_names()
    assert [t["name"] for t in listed["tasks"]] == registered_tasks()
    for info in listed["tasks"]:
        cls = task_class(info["name"])
        assert info == {"name": cls.name, "kind": cls.kind, "train_lengths": list(cls.train_lengths),
                        "eval_lengths": list(cls.eval_lengths), "metric": cls.metric, "paper": cls.paper,
                        "summary": cls.summary, "bar_text": cls.bar_text()}


def test_a_module_the_catalog_does_not_know_makes_it_ignored(monkeypatch):
    assert catalog._catalog() is _catalog
    monkeypatch.setattr(_catalog, "TASK_MODULES", _catalog.TASK_MODULES[1:])  # as if a task file were added
    assert catalog._catalog() is None
    monkeypatch.undo()
    monkeypatch.setattr(_catalog, "ENCODING_MODULES", (*_catalog.ENCODING_MODULES, "gone"))  # or one removed
    assert catalog._catalog() is None


def test_loaded_registries_answer_themselves():
    # in this process the registries are loaded, so what they hold is listed, a task registered here included
    from posenc.lab.tasks.base import _TASKS, Task, register_task

    @register_task("catalog_probe")
    class Probe(Task):
        summary = "registered by a test"

        def sample_batch(self, generator, batch_size, length):
            raise NotImplementedError

    try:
        assert "catalog_probe" in [t.name for t in catalog.task_infos()]
        assert "catalog_probe" not in [t["name"] for t in _catalog.TASKS]
    finally:
        del _TASKS["catalog_probe"]
    assert catalog.encoding_names() == registered_names()
