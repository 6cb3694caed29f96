"""The CustomNet networks: pure Flax NNX, no I/O."""
