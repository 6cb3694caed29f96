"""Noise schedule and samplers (DDIM with classifier-free guidance)."""
