"""scgrpo_verl: SC-GRPO, SDPO, SDPG and OPSD self-teacher methods as a plugin for stock verl.

``scgrpo_verl.algos`` holds the papers' math as plain torch functions (no verl import).
``scgrpo_verl.plugin`` registers the estimator and losses with verl; verl imports it
through the ``verl.plugins`` entry point in every process that imports verl.
"""

__version__ = "0.1.0"
TESTED_VERL_VERSIONS = ("0.9.1",)
