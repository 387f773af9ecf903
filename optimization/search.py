"""Entry point for `optimize=1` builds.

The genetic architecture search is not built yet (issue #3). Until it is, this
returns the fixed default network and says so in the report, which ends up in
the bundle's manifest: no search is pretended.
"""
from __future__ import annotations

from modelization.network import NetworkSpec


def choose_network(n_classes: int, seed: int) -> tuple[NetworkSpec, dict]:
    """Pick the network spec for an optimized build. Returns (spec, report for the manifest)."""
    return NetworkSpec(), {
        "requested": True,
        "performed": False,
        "note": "genetic search not implemented yet; the fixed default network was trained",
        "seed": seed,
        "classes": n_classes,
    }
