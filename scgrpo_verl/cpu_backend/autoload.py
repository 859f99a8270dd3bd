"""``VERL_USE_EXTERNAL_MODULES=scgrpo_verl.cpu_backend.autoload``: activates the CPU backend when its env flag is set."""

from scgrpo_verl.cpu_backend import maybe_activate

maybe_activate()
