"""The synthetic world: coloured 3D solids seen from random cameras, in random boxes, on procedural backgrounds.

A leaf package (it imports nothing of customnet_jax but the view T of `conditioning`): the data builders, the
evaluation's ground truth, the sampler's built-in example and the demo model's measures all draw from it.

Modules: renderer (the solids and their ray-cast renders), synthetic (World, named worlds, backgrounds, Scene,
scene(seed)), source_folders (the world written in the real-data readers' folder layouts, for tests),
held_out (the scenes the demo model is measured on; the built-in example of sample.py is one of them).
"""
