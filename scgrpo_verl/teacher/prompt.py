"""The prompt builder: tokenises the planned teacher prompts of one batch, each distinct text once, in batches.

Each distinct teacher text is tokenised once per batch, in one batched call of the fast tokenizer; the chat
template's text around the demonstration / feedback / hint is rendered once per (prompt, template), and its far
sides (question, instruction, template) are tokenised once per prompt, in pieces shared by every template. A
demonstration's response ids are reused between its junctions (:mod:`scgrpo_verl.teacher.splice`); ``exact=True``
re-tokenises every demonstration from its text instead. Response texts are decoded only where a template needs
them (``Rollout.response_text`` may be ``None``). A prompt over ``max_reprompt_len`` is shortened by
:func:`scgrpo_verl.teacher.fit.fit_teacher_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from scgrpo_verl.teacher.fit import fit_teacher_prompt
from scgrpo_verl.teacher.plans import Plan
from scgrpo_verl.teacher.rollouts import strip_thinking
from scgrpo_verl.teacher.splice import (
    byte_level_tables,
    junction_cut,
    splice_demonstration,
    text_chunks,
)
from scgrpo_verl.settings import TemplateConfig

_CHUNK = 256  # characters: the template's far sides are tokenised in pieces of at least this length
_SENTINELS = (
    tuple(f" \n<<scgrpo-teacher-piece-{k}-a>>\n " for k in range(2)),
    tuple(f"\t<<scgrpo-teacher-piece-{k}-b>> </think>\t" for k in range(2)),
)


@dataclass
class _Demo:
    """One demonstration (a sibling's response), tokenised at most once per batch."""

    row: int
    text: Optional[str] = None  # the demonstration text (decoded on demand)
    ids: Optional[list] = None  # fast path: the response ids reused verbatim in the middle of the demonstration
    head_text: str = ""  # fast path: the demonstration's text before / after those ids (re-tokenised)
    tail_text: str = ""


class PromptBuilder:
    """Tokenises the planned teacher prompts of one batch, each distinct text once, in batches.

    A teacher prompt's text is the chat template's literal text around the pieces (demonstration,
    feedback, hint): ``lit0 + piece0 + lit1 [+ piece1 + lit2]``; the literals are rendered once per
    (prompt, template) with placeholder pieces and checked to be the same for two different
    placeholders (else that prompt is rendered by ``apply_chat_template`` itself).
    """

    def __init__(self, rollouts, tokenizer, templates: TemplateConfig, teacher_config, exact: bool,
                 chat_template_kwargs: Optional[dict] = None):
        self.rollouts, self.tokenizer, self.templates = rollouts, tokenizer, templates
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.remove_thinking = bool(teacher_config.remove_thinking)
        self.max_len = int(teacher_config.max_reprompt_len)
        self.tables = None if exact else byte_level_tables(tokenizer)
        self.exact = exact
        self._literals: dict = {}
        self._cuts: dict = {}
        self._chunked: dict = {}
        self._verified: dict = {}  # (template, roles) -> the template inserts the pieces verbatim
        self._demos: dict[int, _Demo] = {}
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # the backend directly when the wrapper would not change its settings (no truncation / padding)
        self._backend = (
            backend if backend is not None and backend.truncation is None and backend.padding is None else None
        )
        self.fast_count = self.slow_count = 0

    # -- texts ----------------------------------------------------------------------------------------
    def _builder(self, row: int, plan: Plan) -> Callable[[list], list]:
        prompt, templates, template = self.rollouts[row].prompt, self.templates, plan.template
        return lambda pieces: template(prompt, pieces, templates)

    def _render(self, messages: list) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **self.chat_template_kwargs
        )
        if not isinstance(text, str):
            raise ValueError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not a string")
        return text

    def _literal_parts(self, row: int, plan: Plan) -> Optional[list]:
        """The template text around the pieces, or ``None`` when the template does not insert them verbatim: the
        same for a second set of placeholders (checked once per template and sequence of roles, a render each)."""
        prompt = self.rollouts[row].prompt
        key = (plan.template, repr(prompt))
        if key in self._literals:
            return self._literals[key]
        build, count = self._builder(row, plan), len(plan.pieces)
        shape = (plan.template, tuple(str(message.get("role")) for message in prompt))
        found = []
        for sentinels in _SENTINELS[: 1 if shape in self._verified else 2]:
            parts, rest = [], self._render(build(list(sentinels[:count])))
            for sentinel in sentinels[:count]:
                if rest.count(sentinel) != 1:
                    parts = None
                    break
                before, rest = rest.split(sentinel)
                parts.append(before)
            found.append(None if parts is None else parts + [rest])
        if shape not in self._verified:
            self._verified[shape] = found[0] is not None and found[0] == found[1]
        literals = found[0] if self._verified[shape] else None
        self._literals[key] = literals
        return literals

    def demonstration_text(self, row: int) -> str:
        demo = self._demo(row)
        if demo.text is None:
            rollout = self.rollouts[row]
            text = rollout.response_text
            if text is None:
                text = self.tokenizer.decode(rollout.response_ids, skip_special_tokens=True)
            demo.text = strip_thinking(text) if self.remove_thinking else text
        return demo.text

    def piece_texts(self, plan: Plan) -> list[str]:
        return [self.demonstration_text(p) if isinstance(p, int) else p for p in plan.pieces]

    def messages(self, row: int, plan: Plan) -> list:
        return self._builder(row, plan)(self.piece_texts(plan))

    # -- demonstrations -------------------------------------------------------------------------------
    def _demo(self, row: int) -> _Demo:
        if row not in self._demos:
            self._demos[row] = _Demo(row)
        return self._demos[row]

    def _prepare_fast(self, rows: Sequence[int]) -> None:
        """Each demonstration's ids that the teacher prompt reuses verbatim (:func:`splice_demonstration`)."""
        for row in rows:
            rollout = self.rollouts[row]
            found = splice_demonstration(rollout.response_ids, rollout.response_text, self.tables, self.remove_thinking)
            if found is not None:
                demo = self._demo(row)
                demo.text, demo.ids = found.text, found.ids
                demo.head_text, demo.tail_text = found.head_text, found.tail_text

    def _cut(self, text: str, last: bool) -> int:
        key = (text, last)
        if key not in self._cuts:
            self._cuts[key] = junction_cut(text, last, self.tables)
        return self._cuts[key]

    def _chunks(self, text: str) -> tuple:
        if text not in self._chunked:
            self._chunked[text] = text_chunks(text, self.tables, _CHUNK)
        return self._chunked[text]

    def _join(self, job: tuple, encoded: list, unique: dict) -> list:
        """The ids of a job: its texts' encodings and the demonstration's reused ids (an int part), in order."""
        ids: list = []
        for part in job:
            ids += encoded[unique[part]] if isinstance(part, str) else self._demos[part].ids
        return ids

    def _encode(self, texts: list) -> list:
        if not texts:
            return []
        if self._backend is not None:
            return [encoding.ids for encoding in self._backend.encode_batch(texts, add_special_tokens=False)]
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    # -- the batch ------------------------------------------------------------------------------------
    def build(self, plans: Sequence[Optional[Plan]]):
        n = len(plans)
        prompt_ids: list = [None] * n
        messages: dict = {}
        shortened, too_long = [False] * n, [False] * n
        # what to tokenise, per row: ("text", left, middle, right): the three texts side by side, or ("fast", left,
        # before the reused ids, demo row, after them, right); left / right are the same for every row of a prompt
        jobs: dict = {}
        literals = {row: self._literal_parts(row, plan) for row, plan in enumerate(plans) if plan is not None}
        if self.tables is not None:
            fast_rows = sorted({
                plan.pieces[0] for row, plan in enumerate(plans)
                if plan is not None and isinstance(plan.pieces[0], int) and literals[row] is not None
            })
            self._prepare_fast(fast_rows)
        for row, plan in enumerate(plans):
            if plan is None:
                continue
            parts = literals[row]
            first = plan.pieces[0]
            demo = self._demos.get(first) if isinstance(first, int) else None
            fast = parts is not None and demo is not None and demo.ids is not None
            if fast or (parts is not None and not self.exact):
                # the literals' far sides (question, instruction, template) are tokenised once per prompt; each
                # row tokenises only the text between them, or around the demonstration's reused ids
                i, j = self._cut(parts[0], last=True), self._cut(parts[-1], last=False)
                texts = plan.pieces if fast else self.piece_texts(plan)
                rest = "".join(lit + text for lit, text in zip(parts[1:-1], texts[1:])) + parts[-1][:j]
                if fast:
                    jobs[row] = (*self._chunks(parts[0][:i]), parts[0][i:] + demo.head_text, first,
                                 demo.tail_text + rest, *self._chunks(parts[-1][j:]))
                else:
                    jobs[row] = (*self._chunks(parts[0][:i]), parts[0][i:] + texts[0] + rest,
                                 *self._chunks(parts[-1][j:]))
            else:  # the chat template itself, as apply_chat_template(tokenize=True) does
                msgs = self._builder(row, plan)(self.piece_texts(plan))
                messages[row] = msgs
                jobs[row] = (self._render(msgs),)
        # each job: texts tokenised apart (each distinct one once) and a demonstration row whose ids are reused
        unique: dict[str, int] = {}
        for job in jobs.values():
            for text in job:
                if isinstance(text, str):
                    unique.setdefault(text, len(unique))
        encoded = self._encode(list(unique))
        fast_demos, slow_demos = set(), set()
        made: dict = {}  # rows with the same job share one list of ids (read-only)
        for row, job in jobs.items():
            ids = made.get(job)
            if ids is None:
                ids = made[job] = self._join(job, encoded, unique)
            demo = next((part for part in job if isinstance(part, int)), None)
            if demo is not None:
                fast_demos.add(demo)
            elif isinstance(plans[row].pieces[0], int):
                slow_demos.add(plans[row].pieces[0])
            if len(ids) <= self.max_len:
                prompt_ids[row] = ids
                continue
            # too long: shorten the pieces exactly as before (rare; re-tokenises this prompt)
            plan = plans[row]
            fitted = fit_teacher_prompt(
                self._builder(row, plan), self.piece_texts(plan), self.tokenizer, self.max_len,
                self.templates.truncation_marker, self.chat_template_kwargs,
            )
            if fitted.too_long:
                too_long[row] = True
                messages.pop(row, None)
                continue
            prompt_ids[row], messages[row], shortened[row] = fitted.prompt_ids, fitted.messages, fitted.shortened
        self.fast_count, self.slow_count = len(fast_demos), len(slow_demos - fast_demos)
        return prompt_ids, messages, shortened, too_long
