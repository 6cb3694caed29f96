"""The noise schedule (schedule.py) and the samplers that walk it (samplers/)."""
