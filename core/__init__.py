"""rescenter core: order lifecycle, bus, store, scheduler, plugins, HTTP."""
