"""Graph rewrites. Importing this package registers every built-in pass by name."""
from . import budget, cleanup, factorize, fold_bn, fuse, prune_channels  # noqa: F401  (registration)
