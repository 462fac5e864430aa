import json
import subprocess
import sys

import pytest

HEAVY = ["torch", "scvi", "lightning", "anndata", "scanpy", "matplotlib", "pandas"]


def test_import_is_lazy():
    """`import cellflow` loads none of the heavy libraries; they come with first use of a namespace."""
    code = (
        f"import json, sys, cellflow as cf; heavy = {HEAVY!r}; before = [m for m in heavy if m in sys.modules];"
        "cf.pp; after = [m for m in heavy if m in sys.modules]; print(json.dumps([before, after]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = json.loads(out.strip().splitlines()[-1])
    assert before == []
    assert "pandas" in after and "torch" not in after  # the namespace loaded what it needs, no more


def test_unknown_attribute_is_an_attribute_error():
    import cellflow as cf

    with pytest.raises(AttributeError, match="not_a_namespace"):
        cf.not_a_namespace  # noqa: B018
