"""The evaluation side of sfmp_compile: models and text to run on, quality metrics, baselines, experiments.

  models       SmolLM2-135M (converted once from its GGUF) and tiny random models for tests
  text         Wikipedia excerpt / text-file calibration windows and held-out tokens
  metrics      perplexity, KL, SQNR and greedy continuations of any causal LM, in one scoring pass
  baselines    uniform and layer-wise mixed precision as Plans, and exact BPW accounting of a Plan
  experiments  ``Bench``: SFMP against the baselines at equal BPW on shared statistics
  quality      `sfmp eval`: the rows of its quality table
  report       plain-text tables, bits by layer type, size summaries (``sfmp inspect`` / ``demo``)
  plots        PPL-vs-BPW curves and bit-map heatmaps
  demo         `sfmp demo`: a model through the compile backend, side by side with fp32

This package sits above the method modules: it imports them, they never import it.
"""
