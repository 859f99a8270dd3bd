"""What ``scgrpo-verl eval``, ``report`` and ``ttsd`` share (the CLI-facing modules stay :mod:`scgrpo_verl.eval`,
:mod:`scgrpo_verl.report` and :mod:`scgrpo_verl.ttsd`):

- :mod:`.metrics`: pass@k (one unbiased estimator), avg@k / mean@k per data_source;
- :mod:`.verl_logs`: verl's metric logs (``file`` tracking backend and console logger) read back; also the parser
  of ``scgrpo-verl cpu-run`` (:mod:`scgrpo_verl.cpu_backend.run`);
- :mod:`.data`: verl RL parquet rows as :class:`~.data.Question` s, the reward function, grading one response;
- :mod:`.generation`: sampling with vLLM or Hugging Face ``generate``;
- :mod:`.runs`, :mod:`.paper_tables`, :mod:`.report_plots`: the report's runs, paper tables and plots.

Layers: this package may import :mod:`scgrpo_verl.teacher` and :mod:`scgrpo_verl.rewards`, never the reverse.
"""

from scgrpo_verl.errors import UserError


class EvalError(UserError, ValueError):
    """A user-facing error: one line naming the file, row or option and what is allowed (the CLI prints it so)."""
