"""Packaging for scgrpo_verl, a plugin for stock verl (tested on verl 0.9.1)."""

from setuptools import find_packages, setup

VERL_VERSION = "0.9.1"  # the release the test suite runs against; bump together with CI

INSTALL_REQUIRES = [
    f"verl[verl-core]=={VERL_VERSION}",
    "torch>=2.6",
    "omegaconf>=2.3",
    "hydra-core>=1.3",
    "pandas",
    "pyarrow>=19.0.0",
    "datasets",
    "math-verify>=0.8",
    "tqdm",
    "matplotlib",  # explain's colour scales, report's plots (verl[verl-core] does not bring it)
    # used directly by the CPU debugging backend, dry-run and explain (verl already depends on them)
    "transformers",
    "tokenizers",
    "psutil",
    "safetensors",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8",
        "pytest-timeout",
    ],
    # GPU training: verl 0.9.1's own `vllm` extra, i.e. vllm==0.24.0, which pins torch==2.11.0 (with torchvision
    # 0.26.0, torchaudio 2.11.0, transformers 5.9.0): the GPU stack runs torch 2.11.0, not the 2.13.0 of the CPU
    # path and the test suite. Install it in its own virtualenv.
    "gpu": [
        f"verl[vllm]=={VERL_VERSION}",
    ],
    # flash-attn 2.8.3 (the version verl's `flash-attn-cu130torch211` extra names) has no binary wheel on the public
    # package index: it compiles against the installed torch and CUDA toolkit
    # (`pip install -e ".[flash-attn]" --no-build-isolation` after `.[gpu]`). Optional: without it verl uses pure-torch padding helpers and the model runs with
    # +actor_rollout_ref.model.override_config.attn_implementation=sdpa.
    "flash-attn": [
        "flash-attn==2.8.3",
    ],
}

setup(
    name="scgrpo_verl",
    version="0.1.0",
    description="SC-GRPO, SDPO, SDPG and OPSD self-teacher credit assignment as a plugin for verl",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["scgrpo_verl", "scgrpo_verl.*"]),
    package_data={"scgrpo_verl": ["configs/*.yaml", "configs/**/*.yaml"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "verl.plugins": ["scgrpo_verl = scgrpo_verl.plugin"],
        "console_scripts": ["scgrpo-verl = scgrpo_verl.cli:main"],
    },
)
