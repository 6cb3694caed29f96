"""The LoRA example (issue 25): adapters trained on the "palette" world from the built-in demo model lower the
training loss and the held-out objective below the base model's by a margin; an untrained adapter does not.

Measured run (`python tests/lora_example.py 150`, the same settings as this test): training loss (mean of the first /
last 20 steps) 0.251 -> 0.078; held-out objective 0.3303 (the base model) -> 0.0609 (adapted), 82% lower. On the
shared 2-core machine under load (~13% of a core) a run took 584 s to compile and 1056 s for 150 steps; the CPU
time of the whole run is a few minutes.
"""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import lora_example  # noqa: E402

STEPS = 150
# The held-out objective falls by MEASURED_GAIN (relative) in the measured run of STEPS steps; the test asks for
# half of it. An untrained adapter (step 0) is the base model exactly: gain 0.
MEASURED_GAIN = 1 - 0.0609 / 0.3303  # 0.816
MARGIN = MEASURED_GAIN / 2


@pytest.mark.slow
def test_palette_adapter_beats_the_base_on_held_out_scenes():
    result = lora_example.run(steps=STEPS, train_scenes=96, held_out_scenes=32, log=lambda message: None)
    gain = 1.0 - result["after"] / result["before"]
    untrained_model = lora_example.with_params(result["trainer"], result["initial"])
    untrained = 1.0 - lora_example.held_out_loss(untrained_model, result["held_out"]) / result["before"]
    first, last = lora_example.smoothed(result["losses"], 20)
    assert last < 0.6 * first, (first, last)  # the training loss on the new data falls (measured: 0.31 x)
    assert gain >= MARGIN, (result["before"], result["after"])
    assert abs(untrained) < 1e-6 and untrained < MARGIN  # the same measure fails for an untrained adapter
    assert result["changed"] and all(p.endswith(("/lora_a", "/lora_b")) for p in result["changed"])
