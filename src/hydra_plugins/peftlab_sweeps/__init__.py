"""peftlab's Hydra plug-ins. Hydra looks for plug-ins only in the ``hydra_plugins`` namespace, so
they are declared here; the work is done in
``peftlab.runs.launcher``, ``peftlab.reporting.seed_budget`` and ``peftlab.reporting.protocol``.

- ``hydra/launcher=process`` (the default of ``peftlab-train -m``): every job in a fresh process.
- ``hydra/sweeper=seed_budget``: a pilot of seeds, then the seeds each group needs for a narrow interval.
- ``hydra/sweeper=tune_then_test``: every group searched alike on validation, its choice tested on fresh seeds.
- the config folders of the user's own plug-ins on the search path (``search_path``).
"""


def register() -> None:
    """Make the plug-ins known to Hydra before it runs a sweep (peftlab.config stores their configs
    when it is imported; the commands call this). Hydra finds plug-ins by listing
    the ``hydra_plugins`` namespace, which misses packages behind an editable install's import hook
    (``pip install -e .``); registering them by hand works for every kind of install."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.peftlab_sweeps.process_launcher import ProcessLauncher
    from hydra_plugins.peftlab_sweeps.search_path import PluginConfigDirs
    from hydra_plugins.peftlab_sweeps.seed_budget_sweeper import SeedBudgetSweeper
    from hydra_plugins.peftlab_sweeps.tune_then_test_sweeper import TuneThenTestSweeper

    for plugin in (ProcessLauncher, SeedBudgetSweeper, TuneThenTestSweeper, PluginConfigDirs):
        Plugins.instance().register(plugin)
