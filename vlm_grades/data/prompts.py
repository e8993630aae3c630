"""Task prompts (without any chat template). A user template overrides them; it must contain
{question} for question-answering tasks. A literal backslash-n in a template (as typed on a shell
command line) becomes a newline."""
from __future__ import annotations

from vlm_grades.errors import UserError

SHORT_ANSWER_PROMPT = "{question}\nAnswer the question using a single word or phrase."   # LLaVA / lmms-eval
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
EASYVQA_PROMPT = "Question: {question} Answer:"

DEFAULT_PROMPTS = {
    "vqav2": SHORT_ANSWER_PROMPT,
    "gqa": SHORT_ANSWER_PROMPT,
    "coco": CAPTION_PROMPT,
    "easyvqa": EASYVQA_PROMPT,
    "scenes": EASYVQA_PROMPT,
}

QUESTION_TASKS = ("vqav2", "gqa", "easyvqa", "scenes")


def resolve_template(task: str, template: str | None = None) -> str:
    """The prompt template of `task`: the user's (checked) or the default."""
    if template is None:
        if task not in DEFAULT_PROMPTS:
            raise UserError(f"--task: no prompt for task {task!r}")
        return DEFAULT_PROMPTS[task]
    template = template.replace("\\n", "\n")
    if task in QUESTION_TASKS and "{question}" not in template:
        raise UserError(f"--prompt: the template for task {task!r} must contain {{question}}: {template!r}")
    return template


def render(template: str, question: str = "") -> str:
    # replace, not str.format: other braces in a user template stay as typed
    return template.replace("{question}", question)
