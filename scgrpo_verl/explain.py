"""Token-credit view: a self-contained HTML page of a rollout's tokens coloured by f(D) and by D.

``scgrpo-verl explain --model-path M --prompt P --rollout R --solution S --out page.html`` scores
the rollout R under the plain prompt (student) and under the SC-GRPO teacher prompt built from the
verified solution S, and writes one HTML file (no scripts, no external assets) showing, per token,
D = KL(q || p) and the weight f(D) = D / (D + c) SC-GRPO puts on that token's loss term: perceptual colour scales
(matplotlib's viridis for f(D), cividis on a log scale for D) with legends, the top-k most pivotal tokens in context,
every value in a table (readable in a screenshot or on paper), and a print stylesheet.
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
    verdict: str = ""  # whether the rollout is right (grade_rollout)
    correct: Optional[bool] = None


UNTRAINED_MAX_D = 1e-2
"""Below this, every token's D says the teacher barely differs from the student: an untrained model's predictions
do not depend on the solution in its prompt (a random tiny model gives D ~ 1e-3 everywhere)."""


def grade_rollout(rollout: str, solution: str, ground_truth: Optional[str] = None,
                  data_source: str = "math500") -> tuple[Optional[bool], str]:
    """(correct or None, one sentence): the rollout graded by the plugin's reward for ``data_source`` against
    ``ground_truth``, by default the final answer (``\\boxed{...}``) of the verified solution."""
    from scgrpo_verl.rewards import compute_score
    from scgrpo_verl.rewards.math_answers import extract_final_answer

    if ground_truth is None:
        ground_truth = extract_final_answer(solution)
        if ground_truth is None:
            return None, ("the rollout is not graded: the solution has no final answer (\\boxed{...}); give "
                          "--ground-truth (and --data-source)")
        against = f"the solution's final answer {ground_truth!r}"
    else:
        against = f"--ground-truth {ground_truth!r}"
    correct = compute_score(data_source, rollout, ground_truth)["acc"] >= 1.0
    return correct, (f"the rollout is {'correct' if correct else 'wrong'} (graded as {data_source} against "
                     f"{against})")


def untrained_warning(credit: "TokenCredit") -> str:
    """A warning when every D is tiny (:data:`UNTRAINED_MAX_D`), else ''."""
    top = max(credit.divergence, default=0.0)
    if top >= UNTRAINED_MAX_D:
        return ""
    return (f"every D is below {UNTRAINED_MAX_D:g} (max {_fmt(top)}): the teacher barely differs from the student, "
            "as with an untrained model whose predictions ignore the solution in its prompt; the colours show "
            "noise, not pivotal tokens")


D_COLORMAP = "cividis"  # perceptual, colour-blind safe; D on a log scale (it spans orders of magnitude)
WEIGHT_COLORMAP = "viridis"  # perceptual; f(D) in [0, 1) on a linear scale
LEGEND_STOPS = 11


@dataclass(frozen=True)
class ColourScale:
    """A matplotlib colormap with its normalisation: value -> CSS colour, plus the legend's ticks."""

    cmap: str
    vmin: float
    vmax: float
    log: bool = False

    def _norm(self):
        from matplotlib import colors

        if self.log:
            return colors.LogNorm(vmin=self.vmin, vmax=self.vmax, clip=True)
        return colors.Normalize(vmin=self.vmin, vmax=self.vmax, clip=True)

    def rgb(self, value: float) -> tuple[float, float, float]:
        from matplotlib import colormaps

        clipped = max(value, self.vmin) if self.log else value
        return tuple(colormaps[self.cmap](float(self._norm()(clipped)))[:3])

    def css(self, value: float) -> str:
        r, g, b = self.rgb(value)
        return f"rgb({round(r * 255)}, {round(g * 255)}, {round(b * 255)})"

    def text_css(self, value: float) -> str:
        """Black or white, whichever reads better on the value's colour (WCAG relative luminance)."""
        def linear(c):
            return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

        r, g, b = (linear(c) for c in self.rgb(value))
        return "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "#fff"

    def ticks(self) -> list[float]:
        import numpy as np

        if self.log:
            return [float(v) for v in np.geomspace(self.vmin, self.vmax, 5)]
        return [float(v) for v in np.linspace(self.vmin, self.vmax, 5)]

    def gradient_css(self) -> str:
        import numpy as np

        positions = np.linspace(0.0, 1.0, LEGEND_STOPS)
        values = (np.geomspace(self.vmin, self.vmax, LEGEND_STOPS) if self.log
                  else np.linspace(self.vmin, self.vmax, LEGEND_STOPS))
        stops = ", ".join(f"{self.css(float(v))} {p * 100:.0f}%" for v, p in zip(values, positions))
        return f"linear-gradient(to right, {stops})"


def colour_scales(credit: TokenCredit) -> tuple[ColourScale, ColourScale]:
    """(scale of f(D): viridis on [0, 1]; scale of D: cividis, log, from max(min D > 0, max D / 1e4) to max D)."""
    weight = ColourScale(WEIGHT_COLORMAP, 0.0, 1.0)
    positive = [d for d in credit.divergence if d > 0]
    top = max(positive, default=1.0)
    low = max(min(positive, default=top / 10), top / 1e4)
    if low >= top:
        low = top / 10
    return weight, ColourScale(D_COLORMAP, low, top, log=True)


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def _shown(token: str) -> str:
    """A token with its whitespace made visible (for the tables)."""
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5").replace(" ", "\u00b7") or "\u2205"


def pivotal_tokens(credit: TokenCredit, k: int = 10, context: int = 6) -> list[tuple[int, str, str, str]]:
    """The ``k`` tokens with the largest D (the largest f(D) too: f is increasing), as
    ``(index, text before, token, text after)`` with ``context`` tokens either side."""
    order = sorted(range(len(credit.tokens)), key=lambda i: (-credit.divergence[i], i))[:max(k, 0)]
    return [(i, "".join(credit.tokens[max(0, i - context):i]), credit.tokens[i],
             "".join(credit.tokens[i + 1:i + 1 + context])) for i in order]


def _legend(scale: ColourScale, element_id: str, label: str) -> str:
    ticks = "".join(f'<span class="tick" style="left: {p}%">{_fmt(v)}</span>'
                    for p, v in zip((0, 25, 50, 75, 100), scale.ticks()))
    kind = "log scale" if scale.log else "linear scale"
    return (f'<div class="legend" id="{element_id}"><div class="legend-label">{html.escape(label)} '
            f'<small>({scale.cmap}, {kind})</small></div>'
            f'<div class="bar" style="background: {scale.gradient_css()}"></div>'
            f'<div class="ticks">{ticks}</div></div>')


def render_token_credit_html(credit: TokenCredit, title: str = "SC-GRPO token credit", top_k: int = 10) -> str:
    """One self-contained HTML page (no scripts, no external assets): the rollout coloured by f(D) and by D with a
    colour scale each, the top-k pivotal tokens in context, every token's D and f(D) in a table (readable without
    hover, in a screenshot and in print), and the prompts."""
    weight_scale, d_scale = colour_scales(credit)
    warning = untrained_warning(credit)

    def row(values: Sequence[float], scale: ColourScale, label: str, row_id: str) -> str:
        spans = []
        for i, (token, value, d, w) in enumerate(zip(credit.tokens, values, credit.divergence, credit.weights)):
            spans.append(
                f'<span class="tok" data-index="{i}" title="#{i} D={d:.4g} f(D)={w:.3f}" '
                f'style="background: {scale.css(value)}; color: {scale.text_css(value)}">{html.escape(token)}</span>'
            )
        return f'<h2>{label}</h2>\n<div class="row" id="{row_id}">{"".join(spans)}</div>'

    pivots = []
    for rank, (i, before, token, after) in enumerate(pivotal_tokens(credit, top_k), 1):
        d, w = credit.divergence[i], credit.weights[i]
        pivots.append(
            f"<tr><td>{rank}</td><td>{i}</td><td>{_fmt(d)}</td><td>{w:.3f}</td><td class=\"ctx\">"
            f"{html.escape(before)}<mark style=\"background: {weight_scale.css(w)}; color: "
            f"{weight_scale.text_css(w)}\">{html.escape(_shown(token))}</mark>{html.escape(after)}</td></tr>")
    values = "".join(
        f"<tr><td>{i}</td><td class=\"tokcell\">{html.escape(_shown(t))}</td><td>{_fmt(d)}</td>"
        f"<td style=\"background: {weight_scale.css(w)}; color: {weight_scale.text_css(w)}\">{w:.3f}</td></tr>"
        for i, (t, d, w) in enumerate(zip(credit.tokens, credit.divergence, credit.weights)))
    mean_w = sum(credit.weights) / max(len(credit.weights), 1)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; color: #111; }}
.row {{ font-family: monospace; white-space: pre-wrap; line-height: 1.9; border: 1px solid #ccc; padding: 0.5em; }}
.tok {{ border-right: 1px solid rgba(255, 255, 255, 0.35); }}
.legend {{ margin: 0.4em 0 1.2em 0; width: 26em; }}
.warning {{ border-left: 0.4em solid #b00; padding-left: 0.6em; font-weight: bold; }}
.legend-label {{ font-size: 0.9em; margin-bottom: 0.2em; }}
.bar {{ height: 1.1em; border: 1px solid #777; }}
.ticks {{ position: relative; height: 1.3em; font-size: 0.8em; }}
.tick {{ position: absolute; transform: translateX(-50%); top: 0.1em; white-space: nowrap; }}
.tick:first-child {{ transform: none; }}
.tick:last-child {{ transform: translateX(-100%); }}
table {{ border-collapse: collapse; font-size: 0.85em; margin-bottom: 1em; }}
th, td {{ border: 1px solid #bbb; padding: 0.15em 0.5em; text-align: right; }}
td.tokcell, td.ctx {{ font-family: monospace; text-align: left; white-space: pre-wrap; }}
pre {{ background: #f6f6f6; padding: 0.5em; white-space: pre-wrap; }}
.tok, mark, td, .bar {{ -webkit-print-color-adjust: exact; print-color-adjust: exact; }}
@media print {{
  body {{ margin: 0; max-width: none; font-size: 10pt; }}
  h1 {{ font-size: 14pt; }}
  h2 {{ font-size: 11pt; break-after: avoid; }}
  .row, .legend, tr {{ break-inside: avoid; }}
  pre {{ background: none; border: 1px solid #ccc; }}
}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p id="verdict">{html.escape(credit.verdict[:1].upper() + credit.verdict[1:]) or "The rollout is not graded."}</p>
{f'<p id="warning" class="warning">Warning: {html.escape(warning)}.</p>' if warning else ""}
<p id="summary">{len(credit.tokens)} response tokens; c = max(P75 of D, c_min) = {_fmt(credit.c)};
mean f(D) = {mean_w:.3f}; max D = {_fmt(max(credit.divergence, default=0.0))}.
D = KL(teacher &#8214; student) per token; f(D) = D / (D + c) is the weight SC-GRPO puts on that token's loss term.</p>
{row(credit.weights, weight_scale, "Weight f(D) = D / (D + c)", "row-weight")}
{_legend(weight_scale, "legend-weight", "f(D)")}
{row(credit.divergence, d_scale, "Divergence D = KL(teacher || student)", "row-divergence")}
{_legend(d_scale, "legend-divergence", "D")}
<h2>Top {len(pivots)} pivotal tokens (largest D) in context</h2>
<table id="pivotal"><thead><tr><th>rank</th><th>#</th><th>D</th><th>f(D)</th><th>context</th></tr></thead>
<tbody>{"".join(pivots)}</tbody></table>
<h2>Every token's values</h2>
<table id="values"><thead><tr><th>#</th><th>token</th><th>D</th><th>f(D)</th></tr></thead>
<tbody>{values}</tbody></table>
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
    top_k: int = 10,
    ground_truth: Optional[str] = None,
    data_source: str = "math500",
) -> TokenCredit:
    """Load a local checkpoint, build the SC-GRPO teacher prompt from ``solution``, grade the rollout
    (:func:`grade_rollout`) and write the page."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scgrpo_verl.teacher.templates import chat_prompt_ids
    from scgrpo_verl.settings import TemplateConfig
    from scgrpo_verl.teacher.templates import sc_grpo_teacher_messages

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    teacher_messages = sc_grpo_teacher_messages(messages, solution, TemplateConfig())
    student_ids = chat_prompt_ids(tokenizer, messages)
    teacher_ids = chat_prompt_ids(tokenizer, teacher_messages)
    response_ids = tokenizer.encode(rollout, add_special_tokens=False)
    if not response_ids:
        from scgrpo_verl.errors import UserError

        raise UserError("--rollout: empty after tokenisation; give the response text to explain")
    credit = token_credit(model, tokenizer, student_ids, teacher_ids, response_ids)
    credit.correct, credit.verdict = grade_rollout(rollout, solution, ground_truth, data_source)
    with open(out_path, "w", encoding="utf-8") as handle:
        handle.write(render_token_credit_html(credit, top_k=top_k))
    return credit
