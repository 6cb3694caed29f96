"""Sample sheets of the weights being trained: a training-loop hook (customnet_jax/train/hooks.py).

Every `every` steps: the built-in example's object turned to four azimuths, two samples each, by the sampling
pipeline, written as <workdir>/samples/step_<step>_sheet.png (+ the single pictures and the settings). The
trainer does not import this module: train.py and the demo recipe pass the hook in (`sample_sheet_hooks`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from customnet_jax.sampling.builtin_model import default_object
from customnet_jax.sampling.outputs import write_results
from customnet_jax.sampling.pipeline import Pipeline

SAMPLE_VIEWS = ((0.0, 0.0, 0.0), (0.0, 45.0, 0.0), (0.0, 90.0, 0.0), (0.0, 180.0, 0.0))


@dataclasses.dataclass
class SampleSheets:
    """The hook: `every` steps (0: never), `steps` DDIM steps, `prompt` for the background (CustomNet models)."""

    every: int
    steps: int = 50
    prompt: str = ""
    views: tuple[tuple[float, float, float], ...] = SAMPLE_VIEWS
    pipeline: Pipeline | None = None  # built at the first sheet; later sheets swap in the weights, keep the program

    def __call__(self, info: Any) -> None:
        """Write the sheet of `info.step` (a train.hooks.StepInfo) from the current weights (EMA if kept)."""
        model = info.model()  # every process takes part in gathering the weights; process 0 samples
        if model is None:
            return
        if self.pipeline is None:
            self.pipeline = Pipeline(model, info.config.diffusion)
        else:  # same structure: swap the weights, keep the compiled sampling program
            self.pipeline.state = nnx.split(model)[1]
        result = self.pipeline(default_object(info.config.model.resolution), views=self.views, prompt=self.prompt,
                               num_samples=2, seed=0, steps=self.steps, progress=False)
        written = write_results(result, info.workdir / "samples", name=f"step_{info.step:08d}")
        info.log(f"sample sheet {next(p for p in written if p.name.endswith('_sheet.png'))}")


def sample_sheet_hooks(train_config: Any) -> list[SampleSheets]:
    """The sample-sheet hook a config asks for (train.sample_every, sample_steps, sample_prompt), or none."""
    if not train_config.sample_every:
        return []
    return [SampleSheets(every=train_config.sample_every, steps=train_config.sample_steps,
                         prompt=train_config.sample_prompt)]
