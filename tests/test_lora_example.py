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


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured: held-out objective only 0.3% below the base's (docs/lora.md)")
def test_palette_adapter_beats_the_base_on_held_out_scenes():
    result = lora_example.run(steps=STEPS, train_scenes=96, held_out_scenes=32, log=lambda message: None)
    gain = 1.0 - result["after"] / result["before"]
    untrained_model = lora_example.with_params(result["trainer"], result["initial"])
    untrained = 1.0 - lora_example.held_out_loss(untrained_model, result["held_out"]) / result["before"]
    assert abs(untrained) < 1e-6 and untrained < MARGIN  # an untrained adapter is the base: it fails the measure
    assert result["changed"] and all(p.endswith(("/lora_a", "/lora_b")) for p in result["changed"])
    first, last = lora_example.smoothed(result["losses"], 20)
    assert last < 0.6 * first, (first, last)  # the training loss on the new data falls
    assert gain >= MARGIN, (result["before"], result["after"])
