"""Token-credit view: a self-contained HTML page of a rollout's tokens shaded by f(D) and by D.

``scgrpo-verl explain --model-path M --prompt P --rollout R --solution S --out page.html`` scores
the rollout R under the plain prompt (student) and under the SC-GRPO teacher prompt built from the
verified solution S, and writes one HTML file (no scripts, no external assets) showing, per token,
D = KL(q || p) and the weight f(D) = D / (D + c) SC-GRPO puts on that token's loss term.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from scgrpo_verl.algos.sc_grpo import sc_weight


@dataclass
class TokenCredit:
    tokens: list[str]  # decoded response tokens
    divergence: list[float]  # D per token
    weights: list[float]  # f(D) per token
    c: float
    teacher_prompt: str
    student_prompt: str


def _shade(value: float, rgb: tuple[int, int, int]) -> str:
    alpha = max(0.0, min(1.0, value))
    return f"background: rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {alpha:.3f})"


def render_token_credit_html(credit: TokenCredit, title: str = "SC-GRPO token credit") -> str:
    """One HTML page: the rollout twice, shaded by f(D) (in [0, 1)) and by D / max D, plus the prompts."""
    max_d = max(credit.divergence, default=0.0) or 1.0

    def row(values: Sequence[float], scale: float, rgb, label: str) -> str:
        spans = []
        for i, (token, value, d, w) in enumerate(zip(credit.tokens, values, credit.divergence, credit.weights)):
            spans.append(
                f'<span class="tok" data-index="{i}" title="D={d:.4g} f(D)={w:.3f}" '
                f'style="{_shade(value / scale, rgb)}">{html.escape(token)}</span>'
            )
        return f'<h2>{label}</h2>\n<div class="row">{"".join(spans)}</div>'

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; }}
.row {{ font-family: monospace; white-space: pre-wrap; line-height: 1.8; border: 1px solid #ccc; padding: 0.5em; }}
.tok {{ border-right: 1px dotted #ddd; }}
pre {{ background: #f6f6f6; padding: 0.5em; white-space: pre-wrap; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(credit.tokens)} response tokens; c = max(P75 of D, c_min) = {credit.c:.4g};
mean f(D) = {sum(credit.weights) / max(len(credit.weights), 1):.3f}. Hover a token for its values.</p>
{row(credit.weights, 1.0, (220, 60, 30), "Weight f(D) = D / (D + c)")}
{row(credit.divergence, max_d, (30, 90, 220), "Divergence D = KL(teacher || student), scaled by its maximum")}
<h2>Teacher prompt (student prompt + verified solution)</h2>
<pre id="teacher-prompt">{html.escape(credit.teacher_prompt)}</pre>
<h2>Student prompt</h2>
<pre id="student-prompt">{html.escape(credit.student_prompt)}</pre>
</body></html>
"""


def token_credit(
    model,
    tokenizer,
    student_prompt_ids: Sequence[int],
    teacher_prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    c_min: float = 1e-4,
    quantile: float = 0.75,
    temperature: float = 1.0,
) -> TokenCredit:
    """Score one rollout under both prompts and compute D and f(D) for each of its tokens."""
    from scgrpo_verl.engine_path import sc_grpo_divergence

    response_ids = list(response_ids)
    values, _ = sc_grpo_divergence(model, [student_prompt_ids], [teacher_prompt_ids], [response_ids], temperature)
    divergence = values[0].unsqueeze(0)
    weights, c = sc_weight(divergence, torch.ones_like(divergence, dtype=torch.bool), c_min=c_min, quantile=quantile)
    return TokenCredit(
        tokens=[tokenizer.decode([t]) for t in response_ids],
        divergence=divergence[0].tolist(),
        weights=weights[0].tolist(),
        c=float(c),
        teacher_prompt=tokenizer.decode(list(teacher_prompt_ids)),
        student_prompt=tokenizer.decode(list(student_prompt_ids)),
    )


def explain(
    model_path: str,
    prompt: str,
    rollout: str,
    solution: str,
    out_path: str,
    system: Optional[str] = None,
) -> TokenCredit:
    """Load a local checkpoint, build the SC-GRPO teacher prompt from ``solution`` and write the page."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scgrpo_verl.teacher.context import chat_template_ids
    from scgrpo_verl.teacher.templates import TemplateConfig, sc_grpo_teacher_messages

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32).eval()
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    teacher_messages = sc_grpo_teacher_messages(messages, solution, TemplateConfig())
    student_ids = chat_template_ids(tokenizer, messages)
    teacher_ids = chat_template_ids(tokenizer, teacher_messages)
    response_ids = tokenizer.encode(rollout, add_special_tokens=False)
    if not response_ids:
        raise ValueError("the rollout is empty after tokenisation")
    credit = token_credit(model, tokenizer, student_ids, teacher_ids, response_ids)
    with open(out_path, "w", encoding="utf-8") as handle:
        handle.write(render_token_credit_html(credit))
    return credit
