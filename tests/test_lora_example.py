"""The LoRA example (issue 25): adapters trained on the "ringed" world (every background in a ring pattern the
built-in demo model never saw) from the demo model lower the training loss and the held-out objective below the base
model's by a margin; an untrained adapter (step 0) gains nothing.

Measured (`python tests/lora_example.py 150`, the settings of this test, docs/lora.md): training loss (mean of the
first / last 20 steps) 0.455 -> 0.398 (-12.5%); held-out objective 0.4422 (the base) -> 0.3668 (adapted): -17.1%.
The margins below are about half of that. ~2 min on an idle 2-core machine.
"""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import lora_example  # noqa: E402

STEPS = 150
HELD_OUT_MARGIN = 0.08  # the held-out objective at least 8% below the base's (measured: 17.1%)
TRAINING_MARGIN = 0.05  # the smoothed training loss at least 5% lower at the end (measured: 12.5%)


@pytest.fixture(scope="module")
def trained():
    return lora_example.run(steps=STEPS, train_scenes=96, held_out_scenes=32, log=lambda message: None)


def gain(before: float, after: float) -> float:
    return 1.0 - after / before


@pytest.mark.slow
def test_training_changes_only_the_adapters(trained):
    assert trained["changed"] and all(p.endswith(("/lora_a", "/lora_b")) for p in trained["changed"])
    assert trained["after"] != trained["before"]


@pytest.mark.slow
def test_ringed_adapter_beats_the_base_on_held_out_scenes(trained):
    first, last = lora_example.smoothed(trained["losses"], 20)
    assert gain(first, last) >= TRAINING_MARGIN, (first, last)  # the training loss on the new data falls
    assert gain(trained["before"], trained["after"]) >= HELD_OUT_MARGIN, (trained["before"], trained["after"])


@pytest.mark.slow
def test_an_untrained_adapter_fails_the_same_measure(trained):
    """Negative control: the adapters of step 0 (B = 0) are the base model: no gain, so the margin fails."""
    untrained_model = lora_example.with_params(trained["trainer"], trained["initial"])
    untrained = lora_example.held_out_loss(untrained_model, trained["held_out"])
    assert abs(gain(trained["before"], untrained)) < 1e-6
    assert gain(trained["before"], untrained) < HELD_OUT_MARGIN
