"""Training data: the embedded default's synthetic problems, chat rendering with assistant masks, and the
Planner/Coder datasets (JSONL rows, written once as a TFDS array_record dataset, read through grain)."""
