"""A small orchestrated run config for the CLI tests (not collected: no ``test_`` prefix): the
enumerable tiny-language task with one exact follower, so nothing is trained."""

from __future__ import annotations

from pathlib import Path

_EXACT_RUN = """
output_dir: {out}
task: tiny_language
iterations: {iterations}
follower_steps: 0
prompts_per_iteration: 4
num_samples: 4
save_every: 1
eval_samples: 4
tensorboard: {tensorboard}
plots: {plots}
progress: false
leader:
  spec: {{type: weights, init_weights: 0.0, cost_coef: 0.25, cost_kind: l2}}
  lr: 0.1
followers:
  - {{name: exact, trainer: exact, beta: 0.5}}
"""


def write_exact_run_config(
    path: Path, out: str | Path, *, iterations: int, tensorboard: str = "false", plots: str = "true"
) -> Path:
    """Write the run config to ``path`` and return ``path``."""
    text = _EXACT_RUN.format(out=out, iterations=iterations, tensorboard=tensorboard, plots=plots)
    path.write_text(text)
    return path
