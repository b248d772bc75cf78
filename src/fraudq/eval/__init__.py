"""Stage 3: evaluating a checkpoint on labelled dialogues."""
