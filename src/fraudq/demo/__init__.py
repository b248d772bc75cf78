"""The demo: generated dialogues, the tiny reference classifier, and `fraudq demo` (run.py)."""
