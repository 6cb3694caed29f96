"""The built-in demo model: its own VAE, trained with train.py on the synthetic world (recipe.py)."""
