"""CustomNet in JAX/Flax NNX: object customization with location, viewpoint and background control."""

__version__ = "0.1.0"
