"""The built-in demo model: its own VAE, trained with train.py on the synthetic world (recipe.py), and what it
controls, measured on held-out scenes (measure.py, `eval.py demo`: eval_command.py). The top of the import graph:
it uses train, sampling and evaluation; nothing imports it."""
