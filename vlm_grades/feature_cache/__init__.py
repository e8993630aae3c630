"""The frozen-tower feature cache: memory.py (the cache and its keys), disk.py (an optional tier on disk),
switch.py (turns the cache on once the vision tower and the projector are frozen)."""
