"""Evaluation: the paper's metrics (DINO-I, CLIP-I, CLIP-T), ground-truth measures and the protocol runner.

embedders (PyTorch, the `eval` extra) -> metrics (cosines, aggregation) + measures / groundtruth (numpy) ->
report (CSV / JSON / table); protocol runs the grid through a Pipeline; cli is `eval.py` (its `demo` subcommand
comes from customnet_jax/demo/, above this package).
"""
