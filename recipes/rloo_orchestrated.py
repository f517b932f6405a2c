"""HPGD leader + TRL RLOO followers, orchestrated: align_cbrl owns the outer loop.

    accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes 1 \
        recipes/rloo_orchestrated.py --config configs/recipes/rloo_tiny.yaml

Per outer iteration every follower trains ``follower_steps`` RLOO steps on the current shaped
reward, the followers' sampled groups give the HPGD estimate, and the leader takes one step; see
``orchestrated.py`` for the loop and its multi-process behaviour, ``docs/trainer.md`` for the
configuration.
"""

import sys

import orchestrated


def main(argv: list[str]) -> None:
    orchestrated.main(argv, follower_trainer="rloo")


if __name__ == "__main__":
    main(sys.argv[1:])
    from recipe_utils import exit_now

    exit_now()  # skip interpreter finalisation (see recipe_utils.exit_now)
