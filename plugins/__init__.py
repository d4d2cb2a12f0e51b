"""Built-in plugins. Each registers through pluggy exactly like an outside plugin."""
