"""peftlab's YAML configs, installed with the package as ``peftlab.conf`` (package data)."""
