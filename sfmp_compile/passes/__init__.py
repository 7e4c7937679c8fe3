"""FX passes of the SFMP compile backend, one job per module:

  names              Dynamo parameter sources -> qualified layer names
  find_linears       every linear in a graph (Dynamo, AOT/aten, symbolic trace, SFMPLinear ops)
  regions            elementwise regions a last-dim permutation can cross exactly
  tie_orders         which layers need tied row/column orders (so folding is complete)
  calibrate          E[x²] of each linear's input by running the graph on calibration inputs
  rewrite_linears    linear -> gather, SFMP GEMM op, gather (+ bias)
  fold_permutations  drop / compose / merge gathers where exact
  release            free float weights without breaking Dynamo guards
"""
from .find_linears import LinearSite, find_linear_sites  # noqa: F401
from .fold_permutations import FoldReport, count_gathers, fold_permutations, gather_counts  # noqa: F401
from .regions import Region, RegionContext, find_region  # noqa: F401
from .rewrite_linears import rewrite_linears  # noqa: F401
from .tie_orders import tie_groups  # noqa: F401
