"""The one place that turns a data row into chat messages and prompt text.

Calibration, evaluation and reference-model training all call these functions, so a dialogue
can never be formatted two different ways.
"""

from __future__ import annotations

import json

# Qwen2-Instruct's ChatML template: it adds the default system prompt when the conversation has none.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The seed's eval joined instruction and dialogue with one newline; its calibration file used two.
EVAL_JOINER = "\n"
CALIB_JOINER = "\n\n"


def answer_text(label: bool) -> str:
    """The assistant answer the fine-tuned model was trained to give."""
    return json.dumps({"is_fraud": bool(label)})


def user_text(instruction: str, dialogue: str, joiner: str) -> str:
    return instruction + joiner + dialogue


def eval_messages(instruction: str, dialogue: str) -> list[dict]:
    return [{"role": "user", "content": user_text(instruction, dialogue, EVAL_JOINER)}]


def labelled_calib_messages(instruction: str, dialogue: str, label: bool) -> list[dict]:
    return [
        {"role": "user", "content": user_text(instruction, dialogue, CALIB_JOINER)},
        {"role": "assistant", "content": answer_text(label)},
    ]


def training_messages(instruction: str, dialogue: str, label: bool) -> list[dict]:
    """Training uses the eval joiner so the trained model sees exactly the eval prompt."""
    return [
        {"role": "user", "content": user_text(instruction, dialogue, EVAL_JOINER)},
        {"role": "assistant", "content": answer_text(label)},
    ]


def render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def eval_prompt(tokenizer, instruction: str, dialogue: str) -> str:
    """The text the model continues at eval time: chat template plus generation prompt."""
    return render(tokenizer, eval_messages(instruction, dialogue), add_generation_prompt=True)
