"""Import os-ken's OpenFlow 1.3 codec and the ``ovs`` library without what
the daemon never runs.

Both libraries are used for one part each, but importing them the usual
way loads much more, all of it kept resident for the daemon's lifetime
(measured in a fresh interpreter with /proc/self/status VmRSS):

- ``os_ken/__init__.py`` asks pbr for the package version (importlib
  metadata, the email package); ``os_ken/ofproto/__init__.py`` imports the
  parsers of OpenFlow 1.0, 1.2, 1.4 and 1.5 as well; the 1.3 parser names
  ``os_ken.lib.packet.packet`` (only to build packet-out data, which the
  daemon never sends), whose package initialiser imports every protocol of
  os-ken's packet library and, through its zebra module, oslo.config and
  stevedore. Together ~22 MB; the 1.3 codec alone ~5 MB.
- ``ovs.poller`` tries ``import eventlet`` (os-ken's dependency, so it is
  installed) to find out whether eventlet monkey-patched ``select``; the
  import alone (eventlet, greenlet, dnspython) costs ~11 MB. The daemon
  never monkey-patches, so without eventlet the answer is the same: no.

``prepare`` registers os-ken's ``os_ken``, ``os_ken.ofproto`` and
``os_ken.lib.packet`` packages without running their initialisers (their
modules still load from os-ken's own files, on first import), makes
``os_ken.lib.packet.packet`` load on first use, and imports ``ovs.poller``
with eventlet hidden. It does nothing to a library some other code of the
process imported first. ``coordinator/ovs/__init__.py`` runs it, so every
module of this package finds the libraries prepared.
"""

from __future__ import annotations

import importlib.util
import sys

# Packages whose initialisers import far more than the 1.3 codec needs.
_SKIPPED_INITIALISERS = ("os_ken", "os_ken.ofproto", "os_ken.lib", "os_ken.lib.packet")
_ON_FIRST_USE = "os_ken.lib.packet.packet"


def _package_without_initialiser(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an installed package")
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, package)


def _module_on_first_use(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"{name} is not installed")
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)  # executes on the first attribute access
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)


def _prepare_os_ken() -> None:
    if "os_ken" in sys.modules:
        return
    for name in _SKIPPED_INITIALISERS:
        _package_without_initialiser(name)
    _module_on_first_use(_ON_FIRST_USE)


def _import_ovs_without_eventlet() -> None:
    if "ovs.poller" in sys.modules or "eventlet" in sys.modules:
        return
    # A None entry makes `import eventlet` raise ImportError, which
    # ovs.poller takes as "not monkey-patched".
    sys.modules["eventlet"] = None  # type: ignore[assignment]
    try:
        importlib.import_module("ovs.poller")
    finally:
        if "eventlet" in sys.modules and sys.modules["eventlet"] is None:
            del sys.modules["eventlet"]


def prepare() -> None:
    _prepare_os_ken()
    _import_ovs_without_eventlet()
