"""Pure numerics of low-rank factorization: ``(weight, rank) -> factors``.

Nothing here imports fx, nn or the rest of fxcompress; errors are plain ``ValueError``s that the
``factorize`` pass turns into typed, located errors. ``methods.METHODS`` is the table the pass uses.
"""
from .methods import METHODS, Method, for_layer, grouped
from .ranks import RankSpec, parse_rank, resolve_ranks

__all__ = ["METHODS", "Method", "for_layer", "grouped", "RankSpec", "parse_rank", "resolve_ranks"]
