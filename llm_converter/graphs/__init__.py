"""Per-NPU graphs: one serving iteration (forward.py), training steps (next), and the tag arithmetic (tags.py)."""
