"""No module of Postroom imports itself back through others: the import graph has no cycle.

import-linter's contracts (``make layers``) hold the layers and the features' stores apart;
this holds every module, inside a package too.
"""

from __future__ import annotations

import grimp

PACKAGES = ("tasks", "web", "worker", "cli")


def test_no_module_is_on_an_import_cycle() -> None:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)
    cycles = sorted(
        f"{importer} -> {imported} -> ... -> {importer}"
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.chain_exists(importer=imported, imported=importer)
    )
    assert cycles == []
