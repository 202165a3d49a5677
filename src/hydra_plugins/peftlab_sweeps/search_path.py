"""The config folders of the user's plug-ins on Hydra's search path, after peftlab's own conf/:
their ``model/``, ``data/``, ``experiment/`` options sit beside the shipped ones
(``register_config_dir`` in peftlab.config.user_plugins, called by a plug-in module as it loads)."""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class PluginConfigDirs(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from peftlab.config.user_plugins import config_dirs

        for folder in config_dirs():
            search_path.append(provider="peftlab-plugin", path=f"file://{folder}")
