"""Root conftest: the repo's own test run uses its pytest plugin (the ``nnparity`` fixture,
also installed through the ``pytest11`` entry point; registered once either way) and
``pytester`` to test that plugin in-process."""

pytest_plugins = ("nnparity.plugin", "pytester")
