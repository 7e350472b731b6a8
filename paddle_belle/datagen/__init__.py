"""Instruction data generation through the openai client: BELLE's self-instruct (self_instruct.py)."""
