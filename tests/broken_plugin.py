"""A plugin whose import fails, for the test that one broken plugin does not stop the others."""

raise RuntimeError("this plugin is broken on purpose (tests)")
