"""Training pairs from natural photos, as CustomNet's data (docs/model.md §10): SAM + our Zero-1-to-3 + BLIP-2.

    python build_pairs.py --images DIR --out DIR --zero123 MODEL --sam DIR --boxes JSON --blip2 DIR

Modules: sources (photo folders / tfds datasets, ids, sharding), prompts (given box / point, zero-shot
detector, centre), segment (SAM, given masks), filters, views (zero123 stage), caption (BLIP-2, known
captions, subject names), build (orchestration, layout, resume, report), cli. torch / transformers / JAX are
imported only by the stages that need them.
"""
