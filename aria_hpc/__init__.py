"""aria_hpc: ARIA and Random Conditioning distillation on HPC clusters."""

__version__ = "0.1.0"
