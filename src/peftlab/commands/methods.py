"""``peftlab-methods``: the capability table of every registered method, then what the capability
probe found for every tuner peft ships (``method=peft``), as Markdown.

    peftlab-methods
"""

from __future__ import annotations


def main() -> None:
    import peftlab.methods  # noqa: F401  (every method module registers itself)
    import peftlab.tasks  # noqa: F401  (the task types the table names)
    from peftlab.methods.table import capability_table, tuner_table

    print(capability_table())
    print("\nmethod=peft: every tuner peft ships, as the capability probe found it (scripts/probe_peft_tuners.py)\n")
    print(tuner_table())


if __name__ == "__main__":
    main()
