"""The kernel sources: every .cc is compiled and every .h is part of the build's hash (a header changed without a
new hash would load a stale cached build), and both ship in the wheel and the sdist (CI installs in editable mode,
which would not notice a missing header)."""
from pathlib import Path

from paddle_belle import kernels

REPO = Path(__file__).parents[2]


def test_every_source_and_header_is_built_hashed_and_shipped():
    here = Path(kernels.__file__).parent
    assert {p.name for p in kernels.SOURCES} == {p.name for p in here.glob("*.cc")}
    assert {p.name for p in kernels.HEADERS} == {p.name for p in here.glob("*.h")}
    assert '"paddle_belle.kernels": ["*.cc", "*.h"]' in (REPO / "setup.py").read_text(encoding="utf-8")
    manifest = (REPO / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    assert {"include paddle_belle/kernels/*.cc", "include paddle_belle/kernels/*.h"} <= set(manifest)
