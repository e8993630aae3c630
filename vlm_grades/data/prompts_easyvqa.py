"""Prompts of the bundled easy-VQA tasks (the other tasks' prompts live in prompts.py)."""

EASYVQA_PROMPT = "Question: {question} Answer:"
CAPTION_PROMPT = "Caption:"
