"""Inference: the sampling pipeline (pipeline.py), the files it writes (outputs.py), `sample.py` (cli.py), the
shipped demo models and the built-in example (builtin_model.py), and sample sheets during training as a train-loop
hook (training_sheets.py)."""
