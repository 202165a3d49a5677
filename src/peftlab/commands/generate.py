"""``peftlab-generate``: answers from a trained run, its adapter on its base or its merged model
(engine/generate.py does the work).

    peftlab-generate run_dir=outputs/runs/<stamp> prompt="3rd of March, 1998"
    peftlab-generate run_dir=outputs/runs/<stamp> file=prompts.jsonl out=answers.jsonl
    peftlab-generate run_dir=outputs/runs/<stamp> interactive=true       # answers stream as they come

Answers go to standard output (one JSON line each for file=, or ``out=`` writes them).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from peftlab.commands.cli import CONF_DIR, run_app


def quote_prompt(argv: list[str]) -> list[str]:
    """``prompt=3rd of March, 1998`` as the user typed it (the shell has taken the quotes): a
    quoted string for Hydra, whose override grammar would read commas, brackets and quotes."""
    out = []
    for arg in argv:
        value = arg[len("prompt="):]
        if arg.startswith("prompt=") and not (len(value) > 1 and value[0] == value[-1] and value[0] in "'\""):
            escaped = value.replace("'", "\\'")
            if escaped.endswith("\\"):  # a backslash before the closing quote would escape it
                escaped += "\\"
            arg = f"prompt='{escaped}'"
        out.append(arg)
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="generate")
def _hydra_main(cfg: DictConfig) -> None:
    from peftlab.engine.generate import generate_from_config

    generate_from_config(cfg)


def _plan(cfg: DictConfig, out: Path) -> list[tuple[str, str]]:
    """``--dry-run``: the command's checks, and what it would do."""
    from peftlab.engine.command_plans import generate_plan

    return generate_plan(cfg, out)


def main() -> None:
    run_app(_hydra_main, "peftlab-generate", prepare_argv=quote_prompt, plan=_plan)


if __name__ == "__main__":
    main()
