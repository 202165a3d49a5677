"""``peftlab-methods``: the capability table of every registered method, as Markdown.

    peftlab-methods
"""

from __future__ import annotations


def main() -> None:
    import peftlab.methods  # noqa: F401  (every method module registers itself)
    import peftlab.tasks  # noqa: F401  (the task types the table names)
    from peftlab.methods.table import capability_table

    print(capability_table())


if __name__ == "__main__":
    main()
