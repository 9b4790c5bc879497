"""The ovs library's C JSON parser, from the distribution's build of it.

The daemon reads every OVSDB update through the ``ovs`` library's JSON
parser. The library as PyPI has it comes without its C parser
(``ovs._json`` builds only against Open vSwitch's own C library) and
parses in pure Python: ~1.6 ms for a 2.7 kB update on this project's
test machine, 30 times the C parser's time, on every port change of an
attach storm. Debian's and Ubuntu's ``python3-openvswitch`` (a dependency
of ``openvswitch-switch``, so on every machine that runs OVS from the
distribution) ship that extension. When the one there was built for this
interpreter's ABI (its file name says so), ``use_distribution_parser``
loads it as ``ovs._json`` before ``ovs.json`` looks for it; otherwise, or
if it does not load, nothing changes. The parser is the same code the
library's own build would compile; its interface (``Parser`` with
``feed``, ``is_done``, ``finish``) has not changed in years.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

DISTRIBUTION_PACKAGES = Path("/usr/lib/python3/dist-packages")
C_PARSER = "C"  # ``ovs.json.PARSER`` when it parses in C


def use_distribution_parser(packages: Path = DISTRIBUTION_PACKAGES) -> bool:
    """Make ``ovs.json`` parse in C if ``packages`` holds the extension for
    this interpreter; whether it will. Leaves a library already imported
    (or one that has its own C parser) as it is."""
    loaded = sys.modules.get("ovs.json")
    if loaded is not None:
        return bool(getattr(loaded, "PARSER", None) == C_PARSER)
    if "ovs._json" in sys.modules or importlib.util.find_spec("ovs._json") is not None:
        return True
    # The first suffix names this interpreter's version and platform (e.g.
    # .cpython-311-x86_64-linux-gnu.so); the generic ones could be any.
    path = packages / "ovs" / f"_json{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    if not path.is_file():
        return False
    spec = importlib.util.spec_from_file_location("ovs._json", path)
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError:  # e.g. a shared library it links against is missing
        return False
    sys.modules["ovs._json"] = module
    sys.modules["ovs"]._json = module  # type: ignore[attr-defined]  # as an import would bind it
    return True
