"""``python -m scgrpo_verl.rewards.sandbox``: print :func:`~.diagnose.diagnose` as JSON (why this host gets its
isolation mode)."""

import json
import logging

from .diagnose import diagnose

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
print(json.dumps(diagnose(), indent=2))
