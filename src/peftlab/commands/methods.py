"""``peftlab-methods``: the capability table of every registered method, then what the capability
probe found for every tuner peft ships (``method=peft``), as Markdown.

    peftlab-methods
    peftlab-methods plugins=[mylab.plugin]     # with the methods of a plug-in of one's own
"""

from __future__ import annotations


def main() -> None:
    import sys

    import peftlab.methods  # noqa: F401  (every method module registers itself)
    import peftlab.tasks  # noqa: F401  (the task types the table names)
    from peftlab.config.user_plugins import load
    from peftlab.errors import ConfigError

    try:  # the user's own methods too: installed entry points, plugins=[...]
        load(sys.argv[1:])
    except ConfigError as err:
        print(f"peftlab-methods: error: {err}", file=sys.stderr)
        sys.exit(2)
    from peftlab.methods.table import capability_table, tuner_table

    print(capability_table())
    print("\nmethod=peft: every tuner peft ships, as the capability probe found it (scripts/probe_peft_tuners.py)\n")
    print(tuner_table())


if __name__ == "__main__":
    main()
