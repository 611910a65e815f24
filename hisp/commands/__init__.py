"""Groups of ``hisp`` sub-commands, each in its own module, registered by :mod:`hisp.cli` with ``add_command``."""
