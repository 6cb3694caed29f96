"""The LoRA example (issue 25): adapters trained on the "palette" world from the built-in demo model should lower the
training loss and the held-out objective below the base model's by a margin; an untrained adapter does not.

Measured (`python tests/lora_example.py 150`, the settings of this test): training loss (mean of the first / last
20 steps) 0.298 / 0.327; held-out objective 0.2944 (the base) -> 0.2935 (adapted): -0.3%. The example does not
adapt the model yet (docs/lora.md), so the test is a strict expected failure: it fails the run if it starts to
pass (then remove the mark and set the margin from that run). ~7 min on the shared 2-core machine.
"""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import lora_example  # noqa: E402

STEPS = 150
MARGIN = 0.02  # the held-out objective at least 2% below the base's (measured: 0.3%)


@pytest.fixture(scope="module")
def trained():
    return lora_example.run(steps=STEPS, train_scenes=96, held_out_scenes=32, log=lambda message: None)


@pytest.mark.slow
def test_training_changes_only_the_adapters(trained):
    untrained_model = lora_example.with_params(trained["trainer"], trained["initial"])
    untrained = 1.0 - lora_example.held_out_loss(untrained_model, trained["held_out"]) / trained["before"]
    assert abs(untrained) < 1e-6  # the adapter at step 0 is the base model: no gain
    assert trained["changed"] and all(p.endswith(("/lora_a", "/lora_b")) for p in trained["changed"])
    assert trained["after"] != trained["before"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured: held-out objective only 0.3% below the base's (docs/lora.md)")
def test_palette_adapter_beats_the_base_on_held_out_scenes(trained):
    first, last = lora_example.smoothed(trained["losses"], 20)
    assert last < 0.6 * first, (first, last)  # the training loss on the new data falls
    assert 1.0 - trained["after"] / trained["before"] >= MARGIN, (trained["before"], trained["after"])
