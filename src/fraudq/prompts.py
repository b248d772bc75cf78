"""The one place that turns a data row into chat messages and prompt text.

Calibration, evaluation and reference-model training all call these functions, so a dialogue
can never be formatted two different ways.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import tempfile

from fraudq.errors import BadInput

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

# Eval and training prompts join instruction and dialogue with one newline; calibration rows built from labelled
# data use two, as the chat-format calibration file does.
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
    """One conversation through the tokenizer's chat template, in this process (templates fraudq wrote)."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def eval_prompt(tokenizer, instruction: str, dialogue: str) -> str:
    """The text the model continues at eval time: chat template plus generation prompt."""
    return render(tokenizer, eval_messages(instruction, dialogue), add_generation_prompt=True)


# A checkpoint's chat template is code. transformers runs it in jinja's sandbox, which blocks attribute escapes
# but bounds neither memory nor time, so checkpoint templates run in a forked child under these bounds.
TEMPLATE_MEMORY_BYTES = 1 << 30  # address space the child may add to what it inherits
TEMPLATE_SECONDS = 5.0  # plus TEMPLATE_SECONDS_PER_ROW for each conversation
TEMPLATE_SECONDS_PER_ROW = 0.01
TEMPLATE_OUTPUT_SLACK_CHARS = 1 << 16  # a row's text may exceed its messages by this much (template, system prompt)


def _address_space_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _render_in_child(tokenizer, conversations: list[list[dict]], add_generation_prompt: bool, seconds: float,
                     result_path: str) -> None:
    """The forked child: bounds itself, renders, writes JSON, and leaves without running the parent's handlers."""
    code = 0
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _address_space_bytes() + TEMPLATE_MEMORY_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
        signal.setitimer(signal.ITIMER_REAL, seconds)  # the default SIGALRM action ends the child
        texts = []
        for messages in conversations:
            text = render(tokenizer, messages, add_generation_prompt)
            if len(text) > sum(len(m["content"]) for m in messages) + TEMPLATE_OUTPUT_SLACK_CHARS:
                raise MemoryError
            texts.append(text)
        payload = {"texts": texts}
    except MemoryError:
        payload, code = {"error": "memory"}, 3
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        payload, code = {"error": f"{type(exc).__name__}: {first}"}, 4
    try:
        with open(result_path, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, ensure_ascii=False)
    finally:
        os._exit(code)


def render_untrusted(tokenizer, conversations: list[list[dict]], add_generation_prompt: bool,
                     source: str) -> list[str]:
    """Every conversation through a checkpoint's chat template, bounded in memory, output size and time.

    A template that exceeds a bound, or that the sandbox rejects, is bad input in the model `source`.
    """
    if not conversations:
        return []
    seconds = TEMPLATE_SECONDS + TEMPLATE_SECONDS_PER_ROW * len(conversations)
    fd, result_path = tempfile.mkstemp(prefix=".fraudq-template-", suffix=".json")
    os.close(fd)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child leaves through os._exit
            _render_in_child(tokenizer, conversations, add_generation_prompt, seconds, result_path)
        try:
            _, status = os.waitpid(pid, 0)
        except BaseException:  # Ctrl-C or a stop signal while the child renders: it must not outlive us
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        if os.WIFSIGNALED(status):
            if os.WTERMSIG(status) == signal.SIGALRM:
                raise BadInput(f"the chat template of {source} ran longer than {seconds:.0f} s on "
                               f"{len(conversations)} rows; fix tokenizer_config.json's chat_template")
            raise BadInput(f"the chat template of {source} crashed its renderer (signal {os.WTERMSIG(status)})")
        with open(result_path, encoding="utf-8") as handle:
            payload = json.load(handle)
    finally:
        os.unlink(result_path)
    if payload.get("error") == "memory":
        raise BadInput(f"the chat template of {source} produces more than its bound of text or memory "
                       f"({TEMPLATE_MEMORY_BYTES >> 20} MiB); fix tokenizer_config.json's chat_template")
    if "error" in payload:
        raise BadInput(f"the chat template of {source} failed: {payload['error']}")
    return payload["texts"]
