"""The CustomNet networks: pure Flax NNX, no I/O; their parameters as flat dicts (params.py), abstract and
random construction (build.py, init.py) and the small sizes the package needs (presets.py)."""
