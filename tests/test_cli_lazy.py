"""`posenc --help` and the parser are torch-free: the package and every command module load torch only on use."""



def test_help_and_parser_do_not_import_torch(fresh_python):
    out = fresh_python(
        "import contextlib, io, sys\n"
        "import posenc, posenc.cli\n"
        "posenc.cli.build_parser()\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
        "    posenc.cli.main(['--help'])\n"
        "assert 'rope-scaling' in buf.getvalue(), buf.getvalue()\n"
        "print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))\n"
    )
    assert out.strip() == "[]"


def test_lazy_package_keeps_the_public_api(fresh_python):
    out = fresh_python(
        "import sys, posenc\n"
        "assert 'torch' not in sys.modules\n"
        "assert posenc.__version__ and 'Transformer' in dir(posenc)\n"
        "import posenc.model, posenc.backends\n"  # no submodule is named attention: nothing can rebind it
        "assert callable(posenc.attention) and posenc.attention is posenc.backends.attention\n"
        "assert posenc.attention_settings.DENSE_MAX_ELEMENTS > 0\n"
        "from posenc import Transformer, attention\n"
        "assert attention is posenc.attention and Transformer is posenc.model.Transformer\n"
        "assert all(hasattr(posenc, n) for n in posenc.__all__)\n"
        "print(type(posenc.get_encoding('rope', dim=16, n_heads=2)).__name__)\n"
    )
    assert out.strip() == "RoPE"
