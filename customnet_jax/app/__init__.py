"""The interactive app (app.py): a gradio page over the sampling Pipeline; `session` holds its logic."""
