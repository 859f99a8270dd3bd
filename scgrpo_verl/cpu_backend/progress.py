"""Watching a ``cpu-run``'s output (:func:`scgrpo_verl.cpu_backend.run.cpu_run`): :class:`Progress` turns verl's
lines into cpu-run's progress lines (Ray up, the start-up milestones, each step's stages marked by
:data:`scgrpo_verl.cpu_backend.STAGE_MARK`, with the teacher's pass named), :func:`fatal_cause` names a Ray worker
killed for memory or dead, and :func:`last_error_line` picks what a failed run's traceback ends with.
"""

from __future__ import annotations

import re
import time
from typing import Optional

from scgrpo_verl.evaluation.verl_logs import STEP_LINE

from . import STAGE_MARK


# what each trainer stage is called in cpu-run's progress lines (the stage names of verl's marked_timer)
STAGE_LABELS = {
    "gen": "rollout",
    "reward": "reward",
    "old_log_prob": "old log-probs",
    "ref": "reference log-probs",
    "adv": "advantages",
    "update_actor": "actor update",
    "save_checkpoint": "checkpoint",
    "testing": "validation",
}
# verl's timing stage of the pass that runs a method's teacher (SelfTeacherMethod.teacher_pass)
PASS_STAGES = {"log_prob": "old_log_prob", "update": "update_actor"}


def teacher_stage(loss_mode: Optional[str]) -> Optional[str]:
    """The stage whose time ``cpu-run`` reports as the teacher's, for a method with its default options."""
    from scgrpo_verl.methods import get_method, is_method
    from scgrpo_verl.settings import SelfTeacherConfig

    if not is_method(loss_mode):
        return None
    return PASS_STAGES.get(get_method(loss_mode).teacher_pass(SelfTeacherConfig()))


RAY_UP = "Started a local Ray instance"
# verl's start-up milestones after Ray is up (its INFO lines), as cpu-run says them
MILESTONES = (
    ("train and validate dataloader initialized", "data loaded; starting the actor worker (FSDP2 model)"),
    ("actor and ref model engine initialized", "actor ready; starting the reward loop and the rollout server"),
    ("all initialize finished, ready to fit", "workers ready; first rollout"),
)
# a Ray worker killed for memory (the raylet's and the driver's wording) or dead for another reason
_OOM = re.compile(r"OutOfMemoryError|killed due to memory pressure|running low on memory")
_WORKER_DIED = re.compile(r"ActorDiedError|RayActorError|The actor died unexpectedly|WorkerCrashedError|"
                          r"SYSTEM_ERROR|worker died or was killed")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def fatal_cause(line: str) -> Optional[str]:
    """One line naming why the run cannot go on, for a log line that says a Ray worker was killed or died."""
    text = _ANSI.sub("", line).strip()
    if _OOM.search(text):
        detail = text.split("OutOfMemoryError:", 1)[-1].strip() if "OutOfMemoryError:" in text else text
        return f"Ray killed a worker for lack of memory (ray.exceptions.OutOfMemoryError: {detail[:300]})"
    if _WORKER_DIED.search(text):
        return f"a Ray worker died: {text[:300]}"
    return None


class Progress:
    """Turns the run's output lines into cpu-run's progress lines: Ray up, then per step the stage that starts
    (rollout, teacher, update, validation), each with the seconds since launch."""

    def __init__(self, steps: int, start: Optional[float] = None, loss_mode: Optional[str] = None):
        self.steps = steps
        self.teacher_stage = teacher_stage(loss_mode)
        self.start = time.monotonic() if start is None else start
        self.step = 0
        self.last = "starting main_ppo"
        self.last_time = self.start

    def __call__(self, line: str) -> Optional[str]:
        text = _ANSI.sub("", line)
        message = None
        milestone = next((said for marker, said in MILESTONES if marker in text), None)
        if RAY_UP in text:
            message = "Ray is up; starting the workers (model, rollout server, reward loop)"
        elif milestone:
            message = milestone
        elif STAGE_MARK in text:
            stage = text.split(STAGE_MARK, 1)[1].strip()
            if stage == "gen":
                self.step += 1
            label = STAGE_LABELS.get(stage, stage) + (" with the teacher pass" if stage == self.teacher_stage else "")
            message = f"step {self.step}/{self.steps}: {label}"
        elif STEP_LINE.search(text):
            step = STEP_LINE.search(text).group(1)
            message = f"step {step}/{self.steps} done" if step != "0" else "validation before training done"
        if message:
            self.last, self.last_time = message, time.monotonic()
            return f"[cpu-run] {self.elapsed():4.0f}s {message}"
        return None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def heartbeat(self, every: float) -> Optional[str]:
        """A 'still running' line when nothing was said for ``every`` seconds."""
        now = time.monotonic()
        if now - self.last_time < every:
            return None
        self.last_time = now
        return f"[cpu-run] {self.elapsed():4.0f}s still running (last: {self.last})"


def last_error_line(text: str) -> str:
    """The last ``SomeError: message`` line of a log (what a traceback ends with), or ''."""
    found = ""
    for line in text.splitlines():
        match = re.search(r"\b([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", line)
        if match:
            found = f"{match.group(1)}: {match.group(2).strip()}"
    return found
