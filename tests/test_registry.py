"""posenc.registry.Registry: the one name -> class table behind register (encodings) and register_task (tasks)."""

import pytest

from posenc.registry import Registry


class Base:
    family = "a"


def _table():
    return Registry("widget", Base, example="my_widget", decorator="register_widget", attribute="family",
                    allowed=("a", "b"))


def test_register_files_the_class_under_its_name_and_lookup_suggests_close_names():
    table = _table()

    @table.register("spinner")
    class Spinner(Base):
        pass

    assert table.lookup("spinner") is Spinner and Spinner.name == "spinner" and table.names() == ["spinner"]
    assert "spinner" in table and len(table) == 1
    with pytest.raises(ValueError, match=r"unknown widget 'spiner'\. Did you mean 'spinner'\? Available: spinner"):
        table.lookup("spiner")
    with pytest.raises(TypeError, match="widget name must be a str such as 'my_widget'; got int"):
        table.lookup(3)
    del table["spinner"]
    assert table.names() == []


def test_register_refuses_bad_names_classes_attributes_and_taken_names():
    table = _table()
    with pytest.raises(ValueError, match="register_widget: widget names are lowercase identifiers"):
        table.register("Not-A-Name")
    with pytest.raises(TypeError, match=r"register_widget\('x'\) decorates Base subclasses"):
        table.register("x")(int)

    class Odd(Base):
        family = "z"

    with pytest.raises(ValueError, match=r"family 'z' is not one of \('a', 'b'\)"):
        table.register("odd")(Odd)
    table.register("one")(type("One", (Base,), {}))
    with pytest.raises(ValueError, match="'one' is already registered to One"):
        table.register("one")(type("Two", (Base,), {}))
